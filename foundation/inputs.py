"""The one bad-input policy: every adapter reads files through it.

``data.on_error=raise`` (default): the first bad file stops the run with one line naming the file, the
problem and the way out. ``data.on_error=skip``: the file is counted once, listed in the run's
``skipped.txt`` and ``summary.json``, and never read again (not next epoch, not in another DataLoader
worker). No other sample is served in its place: a sample that fails at load time comes back as
``None`` and the collate function leaves it out of the batch, so a run never trains on a duplicate.

Why a ledger file: DataLoader workers are separate processes (and non-persistent ones are forked again
every epoch), so a skip recorded in one worker's memory is forgotten. Each skip is appended to a small
file whose name the main process fixes before workers start; every process reads it back, so a file
found bad once is known bad everywhere.

Cheap checks (:func:`precheck`) run before a reader opens a file: it exists, is not empty, its magic
bytes match its extension. Each reader library's own exceptions (:func:`reader_errors`) become a
:class:`DataError` through :meth:`InputPolicy.guard`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import tempfile
import uuid
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from foundation.errors import DataError, DomainfmError

log = logging.getLogger("domainfm")
T = TypeVar("T")

ON_ERROR = ("raise", "skip")
FIX = "fix or remove the file, or set data.on_error=skip to count and skip bad files; `domainfm validate` lists them all"

# extension -> magic bytes at offset 0 (any of). Formats without a fixed signature are absent.
MAGIC: dict[str, tuple[bytes, ...]] = {
    ".wav": (b"RIFF", b"RIFX", b"RF64"),
    ".flac": (b"fLaC", b"ID3"),
    ".ogg": (b"OggS",), ".oga": (b"OggS",), ".opus": (b"OggS",),
    ".aiff": (b"FORM",), ".aif": (b"FORM",),
    ".nii.gz": (b"\x1f\x8b",), ".gz": (b"\x1f\x8b",),
    ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    ".tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    ".ply": (b"ply",),
    ".las": (b"LASF",), ".laz": (b"LASF",),
    ".npy": (b"\x93NUMPY",),
    ".npz": (b"PK\x03\x04", b"PK\x05\x06"),
    ".off": (b"OFF", b"NOFF", b"COFF", b"CNOFF", b"STOFF"),
}


def reader_errors() -> tuple[type[BaseException], ...]:
    """The exception types readers raise for bad files: Python's own plus each reader library's.

    Imported lazily: a missing optional stack only removes its own entry.
    """
    errors: list[type[BaseException]] = [DomainfmError, OSError, ValueError, EOFError, IndexError, KeyError,
                                         struct.error, zlib.error, MemoryError, RuntimeError, UnicodeDecodeError]
    for module, name in (("rasterio.errors", "RasterioError"), ("soundfile", "LibsndfileError"),
                         ("soundfile", "SoundFileError"), ("nibabel.filebasedimages", "ImageFileError"),
                         ("nibabel.spatialimages", "HeaderDataError"), ("pydicom.errors", "InvalidDicomError"),
                         ("laspy.errors", "LaspyException"), ("numpy.exceptions", "AxisError")):
        mod = sys.modules.get(module)
        if mod is None:
            with contextlib.suppress(Exception):
                mod = __import__(module, fromlist=[name])
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(dict.fromkeys(errors))


class BadFile(DataError, ValueError):
    """A file a reader refused: a :class:`DataError` (one CLI line) that is also a ``ValueError``, so
    code that caught the readers' ``ValueError`` subclasses before this policy existed still does."""


def as_data_error(path: object, err: BaseException) -> DomainfmError:
    """A reader's exception as a one-line error naming ``path``; our own errors keep their text and type."""
    if isinstance(err, DomainfmError):
        return err
    text = " ".join(str(err).split()) or type(err).__name__
    p = str(path)
    problem = text[len(p):].lstrip(": ") if text.startswith(p) else f"{text} ({type(err).__name__})"
    return BadFile(p, problem or type(err).__name__, FIX)


def problem_of(err: BaseException, path: object = None) -> str:
    """The error's message without a leading file path (the ledger and reports name the file apart)."""
    if isinstance(err, DataError):
        return err.problem
    text = " ".join(str(err).split()) or type(err).__name__
    p = str(path) if path is not None else None
    return text[len(p):].lstrip(": ") or text if p and text.startswith(p) else text


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def precheck(path: str | Path) -> None:
    """Cheap checks before any reader: exists, not empty, magic bytes match the extension.

    Raises :class:`BadFile`; a folder (a DICOM series, a band folder) only has to exist.
    """
    p = Path(path)
    if not p.exists():
        raise BadFile(p, "no such file or folder", "check data.root / the manifest's path column")
    if p.is_dir():
        return
    size = p.stat().st_size
    if size == 0:
        raise BadFile(p, "empty file (0 bytes)", FIX)
    magic = MAGIC.get(_suffix(p))
    if magic:
        with open(p, "rb") as fh:
            head = fh.read(max(len(m) for m in magic))
        if not any(head.startswith(m) for m in magic):
            raise BadFile(p, f"not a {_suffix(p)} file (its first bytes are {head[:8]!r})", FIX)


class InputPolicy:
    """``raise`` or ``skip`` bad inputs; under skip, each bad file is counted once and never reread.

    ``found``: how many files/sources the dataset was built from; ``dropped``: things left out on
    purpose, not because they were broken (e.g. chips that are mostly cloud), by reason;
    ``notes``: what was inferred or fell back to a default, for the data summary.
    """

    def __init__(self, on_error: str | None = "raise", ledger: str | Path | None = None) -> None:
        on_error = on_error or "raise"
        if on_error not in ON_ERROR:
            raise DomainfmError(f"data.on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        ledger = ledger or os.environ.get("DOMAINFM_INPUTS_LEDGER")  # `domainfm validate` collects every policy's records
        self.ledger = Path(ledger) if ledger else Path(tempfile.gettempdir()) / f"domainfm-skipped-{os.getpid()}-{uuid.uuid4().hex[:12]}.tsv"
        self._skipped: dict[str, str] = {}
        self._ledger_size = 0
        self.found = 0
        self.dropped: Counter[str] = Counter()
        self.notes: list[str] = []

    @classmethod
    def from_data(cls, data: dict | None) -> "InputPolicy":
        return cls((data or {}).get("on_error") or "raise")

    @property
    def skip(self) -> bool:
        return self.on_error == "skip"

    # -- the record of bad files ---------------------------------------------------------------
    def _refresh(self) -> None:
        try:
            size = self.ledger.stat().st_size
        except OSError:
            return
        if size == self._ledger_size:
            return
        with open(self.ledger, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                path, _, reason = line.rstrip("\n").partition("\t")
                if path:
                    self._skipped.setdefault(path, reason)
        self._ledger_size = size

    def is_bad(self, path: object) -> bool:
        """Whether ``path`` is already known bad (in this process or any other sharing the ledger)."""
        if str(path) in self._skipped:
            return True
        self._refresh()
        return str(path) in self._skipped

    @property
    def skipped(self) -> dict[str, str]:
        """Every bad file (path -> reason), each once."""
        self._refresh()
        return dict(self._skipped)

    def skipped_items(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every bad file, in the order they were found."""
        return list(self.skipped.items())

    def fail(self, path: object, err: BaseException | str) -> None:
        """Raise (``raise``) or record once (``skip``) that ``path`` is bad.

        A recipe/adapter setting error (``RecipeError``) is about the configuration, not the file: it is
        raised as it is under either policy, never counted against every file."""
        if isinstance(err, BaseException) and any(c.__name__ == "RecipeError" for c in type(err).__mro__):
            raise err
        if isinstance(err, str):
            err = BadFile(path, err, FIX)
        if not self.skip:
            raise as_data_error(path, err) from (err if not isinstance(err, DomainfmError) else None)
        p = str(path)
        if self.is_bad(p):
            return
        reason = problem_of(err, p)
        self._skipped[p] = reason
        with open(self.ledger, "a", encoding="utf-8") as fh:  # one short append: atomic between processes
            fh.write(f"{p}\t{reason}\n")
        log.warning("skipping %s: %s (data.on_error=skip)", p, reason)

    @contextlib.contextmanager
    def guard(self, path: object) -> Iterator[None]:
        """Turn a reader's exception inside the block into this policy's outcome for ``path``.

        Under ``skip`` the exception is swallowed after recording: callers use :meth:`load` when they
        need to know whether a value came back.
        """
        try:
            yield
        except reader_errors() as err:
            self.fail(path, err)

    def load(self, path: object, read: Callable[..., T], *args: Any, check: bool = True, **kwargs: Any) -> T | None:
        """``read(*args)`` under the policy: None under ``skip`` when ``path`` is (or just turned out) bad.

        ``check`` runs :func:`precheck` first (size, magic bytes).
        """
        if self.skip and self.is_bad(path):
            return None
        try:
            if check:
                precheck(path)
            return read(*args, **kwargs)
        except reader_errors() as err:
            self.fail(path, err)
            return None

    def ok(self, path: object, check: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Whether ``check(*args)`` passes for ``path`` (a check that returns nothing); failures as in :meth:`load`."""
        if self.skip and self.is_bad(path):
            return False
        try:
            check(*args, **kwargs)
            return True
        except reader_errors() as err:
            self.fail(path, err)
            return False

    def note(self, text: str, warn: bool = True) -> None:
        """Something inferred or defaulted that a user must see (shown in the data summary); ``warn``
        also logs it as a warning (a fallback, such as a missing label file), not only as information."""
        if text not in self.notes:
            self.notes.append(text)
            log.log(logging.WARNING if warn else logging.INFO, "%s", text)

    def counts(self) -> dict:
        """Counts for ``summary.json`` and ``validation.json``."""
        skipped = self.skipped
        return {"on_error": self.on_error, "files_found": self.found, "files_skipped": len(skipped),
                "dropped": dict(self.dropped), "notes": list(self.notes)}

    def write_skipped(self, path: str | Path) -> Path:
        """``skipped.txt``: one ``path<TAB>reason`` line per bad file, sorted."""
        path = Path(path)
        path.write_text("".join(f"{p}\t{r}\n" for p, r in sorted(self.skipped.items())))
        return path


def policy_of(dataset: Any) -> InputPolicy | None:
    """The :class:`InputPolicy` a dataset (or a Subset of one) reads through, if any."""
    seen = 0
    while dataset is not None and seen < 4:
        pol = getattr(dataset, "inputs", None)
        if isinstance(pol, InputPolicy):
            return pol
        dataset, seen = getattr(dataset, "dataset", None), seen + 1
    return None


# adapter config keys worth showing as "inferred" in the data summary, per modality
SHOWN_SETTINGS = {
    "speech": ("sample_rate", "n_mels", "high_freq", "max_seconds"),
    "earth": ("preset", "bands", "chip_size"),
    "medical": ("orientation", "spacing", "intensity", "roi"),
    "pointcloud": ("columns", "features", "points"),
    "graph": ("task", "feature_dim", "degree_features"),
}


def data_summary(adapter: Any, dataset: Any) -> str:
    """One screen on the data a run is about to use: found, skipped, dropped, classes, inferred settings.

    ``adapter``: the adapter, or its modality name (the settings are then read from the dataset's config).
    """
    pol = policy_of(dataset)
    counts = pol.counts() if pol is not None else {}
    lines = [f"data: {len(dataset)} sample(s)" + (f" from {counts['files_found']} file(s)" if counts.get("files_found") else "")
             + (f"; on_error={counts['on_error']}" if counts else "")]
    if pol is not None:
        skipped = pol.skipped
        if skipped:
            lines.append(f"  skipped {len(skipped)} bad file(s):")
            for p, r in list(sorted(skipped.items()))[:5]:
                lines.append(f"    {p}: {r}")
            if len(skipped) > 5:
                lines.append(f"    ... and {len(skipped) - 5} more (the run's skipped.txt lists them all)")
        for reason, n in pol.dropped.items():
            lines.append(f"  dropped {n} {reason}")
    classes = list(getattr(dataset, "classes", None) or [])
    if classes and hasattr(dataset, "label"):
        per = Counter()
        for i in range(len(dataset)):
            lab = dataset.label(i)
            if lab is not None:
                per[classes[lab] if isinstance(lab, int) and lab < len(classes) else lab] += 1
        shown = ", ".join(f"{c}: {per[c]}" for c in classes[:12]) + (" ..." if len(classes) > 12 else "")
        lines.append(f"  {len(classes)} class(es): {shown}")
    if isinstance(adapter, str):  # a modality name: the dataset holds the adapter's (live) config
        name, cfg = adapter, getattr(dataset, "config", None) or getattr(dataset, "cfg", None) or {}
    else:
        name, cfg = getattr(adapter, "name", ""), getattr(adapter, "config", {}) or {}
    cfg = cfg if isinstance(cfg, dict) else {}
    settings = [f"{k}={cfg[k]}" for k in SHOWN_SETTINGS.get(name, ()) if cfg.get(k) not in (None, "", [])]
    if settings:
        text = ", ".join(settings)
        lines.append("  settings: " + (text if len(text) < 300 else text[:297] + "..."))
    for n in (pol.notes if pol is not None else [])[:5]:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def show_data_summary(adapter: Any, dataset: Any, main: bool = True, quiet: bool = False) -> None:
    """Print the data summary once (main process); ``quiet`` sends it to the log instead."""
    if not main:
        return
    text = data_summary(adapter, dataset)
    if quiet:
        log.info("%s", text)
    else:
        print(text, file=sys.stderr, flush=True)


def finish_inputs(dataset: Any, run_dir: str | Path) -> dict:
    """Write ``skipped.txt`` into the run directory; return the counts ``summary.json`` carries."""
    pol = policy_of(dataset)
    if pol is None:
        return {}
    out = Path(run_dir) / "skipped.txt"
    if out.exists():  # a resumed run: files skipped before the interruption still count, once
        for line in out.read_text().splitlines():
            path, _, reason = line.partition("\t")
            if path:
                pol._skipped.setdefault(path, reason)
    if pol.skipped or pol.skip:
        pol.write_skipped(out)
    return {"inputs": pol.counts()}
