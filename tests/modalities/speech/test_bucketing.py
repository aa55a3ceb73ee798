"""Speech length bucketing: the dataset's ``lengths`` predict each clip's token count from headers
alone, and the training sampler uses them to batch similar lengths, so far less padding is computed."""
import numpy as np
import soundfile as sf
import torch

from foundation.data import TrainSampler
from modalities.speech.adapter import SpeechAdapter


def clips(tmp_path, seconds):
    rng = np.random.default_rng(0)
    for i, s in enumerate(seconds):
        sf.write(tmp_path / f"c{i:03d}.wav", 0.1 * rng.standard_normal(int(8000 * s)).astype("float32"), 8000)
    return tmp_path


def padding_fraction(lengths, sampler):
    order = [i for i, _ in sampler]
    batches = [order[k:k + sampler.batch_size] for k in range(0, len(order), sampler.batch_size)]
    real = sum(lengths[i] for b in batches for i in b)
    computed = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / computed


def test_lengths_match_the_token_counts_and_bucketing_cuts_padding(tmp_path):
    seconds = np.random.default_rng(1).uniform(0.2, 3.0, 48).round(3)
    ds = SpeechAdapter({"max_seconds": 2.0}).dataset({"root": str(clips(tmp_path, seconds))}, train=False)
    lengths = ds.lengths
    for i in range(0, 48, 7):  # header-only prediction == what the pipeline really cuts
        assert lengths[i] == ds[i].patches.shape[0], ds.segments[i].path
    assert max(lengths) == lengths[int(np.argmax(seconds))] and len(set(lengths)) > 5
    plain = padding_fraction(lengths, TrainSampler(48, 8, seed=0))  # negative control: no lengths
    bucketed = padding_fraction(lengths, TrainSampler(48, 8, seed=0, lengths=lengths))
    assert bucketed < 0.5 * plain, (bucketed, plain)
    # still one seeded permutation of the same samples
    assert sorted(i for i, _ in TrainSampler(48, 8, seed=0, lengths=lengths)) == list(range(48))
