"""Speech: recordings (WAV/FLAC/OGG) -> Kaldi log-mel -> (time x mel) patch tokens."""
from modalities.speech.adapter import SpeechAdapter

__all__ = ["SpeechAdapter"]
