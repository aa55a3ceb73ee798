"""Reading audio files with soundfile: any rate, any channel count, any bit depth, mono out.

``torchaudio.load`` now needs torchcodec; soundfile (libsndfile) reads WAV, FLAC and OGG with no
extra stack, so it is the one reader. Every failure names the file, because a dataset of thousands
of recordings is only debuggable when the error says which one is broken.
"""
from __future__ import annotations

from contextlib import contextmanager

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from foundation.errors import DomainfmError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif")


class AudioReadError(DomainfmError, ValueError):  # DomainfmError: the CLI prints it as one line
    """A file that cannot be used as audio (empty, truncated, not audio, unreadable)."""


@dataclass
class AudioInfo:
    path: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_wav_complete(path: Path) -> None:
    """libsndfile silently shortens a WAV cut off mid-data; compare the header's data size instead."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # RF64/W64 and friends: leave them to libsndfile
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, length = chunk[:4], struct.unpack(endian + "I", chunk[4:8])[0]
            if cid == b"data":
                if length != 0xFFFFFFFF and pos + 8 + length > size:
                    raise AudioReadError(
                        f"{path}: truncated WAV: header declares {length} bytes of audio, the file holds {size - pos - 8}"
                    )
                end = pos + 8 + length + (length & 1)
                if length != 0xFFFFFFFF and size - end >= 8:  # what follows must be whole chunks (LIST, id3...)
                    f.seek(end)
                    nxt = f.read(8)
                    nid, nlen = nxt[:4], struct.unpack(endian + "I", nxt[4:8])[0]
                    if not all(32 <= b < 127 for b in nid) or end + 8 + nlen > size:
                        raise AudioReadError(f"{path}: WAV header declares {length} bytes of audio but {size - end} more bytes "
                                             "follow that are not a chunk (header/body mismatch; re-export the file)")
                return
            pos += 8 + length + (length & 1)


def _check_ogg_complete(path: Path) -> None:
    """libsndfile reads a cut-off Ogg stream up to its last whole page without complaint; a complete
    stream's last page carries the end-of-stream flag (header type bit 0x04)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    last = tail.rfind(b"OggS")
    if last < 0 or last + 6 > len(tail) or not tail[last + 5] & 0x04:
        raise AudioReadError(f"{path}: truncated Ogg stream (its last page is not marked end-of-stream; re-export the file)")


def audio_info(path: str | Path) -> AudioInfo:
    """Header information, checked: raises :class:`AudioReadError` naming the file on any problem."""
    with _opened(path) as (_, info):
        return info


@contextmanager
def _opened(path: str | Path):
    """The open file and its checked header: one open serves both the checks and the read."""
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AudioReadError(f"{path}: empty file (0 bytes)")
    try:
        f = sf.SoundFile(str(path))
    except Exception as err:  # libsndfile raises its own error types for "not audio", "truncated header"...
        raise AudioReadError(f"{path}: not a readable audio file ({err})") from err
    with f:
        if path.suffix.lower() == ".wav":
            _check_wav_complete(path)
        if path.suffix.lower() in (".ogg", ".oga", ".opus"):
            _check_ogg_complete(path)
        yield f, AudioInfo(str(path), int(f.samplerate), int(f.frames), int(f.channels))


def read_audio(path: str | Path, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the file's native sample rate.

    ``start``/``end`` (seconds) read only that segment, so a manifest can point into a long
    recording without loading all of it. Multi-channel audio is mixed down by averaging channels.
    """
    with _opened(path) as (f, info):
        first = int(round((start or 0.0) * info.sample_rate))
        last = info.frames if end is None else min(info.frames, int(round(end * info.sample_rate)))
        if start is not None and first >= max(info.frames, 1):
            raise AudioReadError(f"{path}: segment start {start}s is past the end of the recording ({info.seconds:.3f}s)")
        try:
            if first:
                f.seek(first)
            data = f.read(max(last - first, 0), dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioReadError(f"{path}: could not decode audio ({err})") from err
        rate = info.sample_rate
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: contains no audio samples")
    if data.shape[0] < last - first:
        raise AudioReadError(f"{path}: truncated: header declares {last - first} frames, only {data.shape[0]} could be read")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioReadError(f"{path}: contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def iter_blocks(path: str | Path, seconds: float) -> "tuple[int, object]":
    """(native rate, generator of mono float32 blocks of ``seconds``) for recordings too long to load."""
    info = audio_info(path)
    block = max(1, int(round(seconds * info.sample_rate)))

    def gen():
        try:
            for data in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
                yield data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        except Exception as err:
            raise AudioReadError(f"{path}: could not decode audio ({err})") from err

    return info.sample_rate, gen()
