"""Downstream: pooling over real frames only, frame embeddings, chunked long recordings, EER, probes."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from foundation.model import Encoder
from foundation.tokens import collate
from modalities.base import adapter_from_config
from modalities.speech.dataset import SpeechPipeline
from modalities.speech.tasks import (
    cosine_trials,
    embed_recording,
    embed_utterances,
    equal_error_rate,
    fit_layer_probe,
    frame_embeddings,
    mean_std,
    predict_layer_probe,
)


@pytest.fixture(scope="module")
def small(synthetic_dir):
    torch.manual_seed(0)
    a = adapter_from_config("speech", {})
    ds = a.dataset({"root": str(synthetic_dir), "labels": "pattern:^(\\d)_"}, train=False)
    a.fit(ds)
    return Encoder.build(a, {"width": 32, "depth": 2, "heads": 2}).eval(), ds


def test_utterance_embedding_ignores_padding(small):
    enc, ds = small
    lengths = [ds[i].patches.shape[0] for i in range(20)]
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[short] < lengths[long]
    alone = embed_utterances(enc, ds, batch_size=1, indices=[short])
    batched = embed_utterances(enc, ds, batch_size=2, indices=[short, long])
    np.testing.assert_allclose(alone["meanstd"][0], batched["meanstd"][0], atol=1e-4)
    np.testing.assert_allclose(alone["layers"][0], batched["layers"][0], atol=1e-4)
    # negative control: pooling that counts padding changes with the batch
    b = collate([ds[short], ds[long]])
    out = enc(b)
    leaky = mean_std(out.tokens, torch.zeros_like(out.padding))[0]
    assert not torch.allclose(leaky, torch.as_tensor(alone["meanstd"][0]), atol=1e-3)
    assert batched["layers"].shape == (2, 2, 64) and list(batched["labels"]) == [ds.label(short), ds.label(long)]


def test_frame_embeddings_one_per_time_step(small):
    enc, ds = small
    b = collate([ds[0], ds[1]])
    out = enc(b)
    frames = frame_embeddings(out.tokens, b.coords, out.padding)
    for i, f in enumerate(frames):
        steps = int(ds[i].coords[:, 0].max()) + 1
        assert f.shape == (steps, enc.width)
        first = out.tokens[i][(b.coords[i, :, 0] == 0) & ~out.padding[i]].mean(0)
        torch.testing.assert_close(f[0], first)


def test_long_recording_is_embedded_in_bounded_chunks(small, tmp_path):
    enc, ds = small
    rate = enc.adapter.config["sample_rate"]
    x = np.concatenate([ds.waveform(i).numpy() for i in range(40)])  # about 40 s
    sf.write(tmp_path / "long.flac", x, rate, format="FLAC")
    seen = []
    hook = enc.tokenizer.register_forward_hook(lambda m, i, o: seen.append(o.shape[0] * o.shape[1]))
    try:
        out = embed_recording(enc, tmp_path / "long.flac", chunk_seconds=4.0, batch_chunks=2)
    finally:
        hook.remove()
    pt, pf = enc.adapter.config["patch"]
    per_chunk = (400 // pt) * -(-enc.adapter.config["n_mels"] // pf)
    assert max(seen) <= 2 * per_chunk  # memory bounded by the chunk, not the recording
    seconds = len(x) / rate
    assert abs(out["frames"].shape[0] - seconds / (pt * 0.01)) <= 2 * len(seen)
    assert out["embedding"].shape == (2 * enc.width,) and np.isfinite(out["embedding"]).all()
    assert np.all(np.diff(out["frame_times"]) > 0)
    # a clip shorter than one chunk embeds exactly like the whole-clip forward pass
    sf.write(tmp_path / "short.wav", ds.waveform(0).numpy(), rate, subtype="FLOAT")
    one = embed_recording(enc, tmp_path / "short.wav", chunk_seconds=30.0)
    s = SpeechPipeline(dict(enc.adapter.config, max_seconds=None)).to_sample(ds.waveform(0))
    with torch.no_grad():
        o = enc(collate([s]))
    np.testing.assert_allclose(one["embedding"], mean_std(o.tokens, o.padding)[0].numpy(), atol=1e-4)


def test_equal_error_rate():
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    assert equal_error_rate(np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]), same) == 0.0
    assert equal_error_rate(-np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]), same) == 1.0
    # one target below one non-target: 1 of 4 rejected at the threshold accepting 1 of 4 impostors
    assert equal_error_rate(np.array([0.9, 0.8, 0.7, 0.35, 0.4, 0.3, 0.2, 0.1]), same) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    assert abs(equal_error_rate(rng.normal(size=4000), rng.random(4000) < 0.3) - 0.5) < 0.05
    with pytest.raises(ValueError):
        equal_error_rate(np.ones(3), np.ones(3, bool))


def test_cosine_trials_separate_speakers_in_a_clear_case():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    spk = np.repeat(np.array(["a", "b", "c"]), 10)
    emb = centres[np.repeat(np.arange(3), 10)] + rng.normal(size=(30, 16))
    scores, same = cosine_trials(emb, spk, "b")
    assert same.sum() == 45 and (~same).sum() == 200
    assert equal_error_rate(scores, same) < 0.05


def test_layer_weighted_probe_finds_the_informative_layer():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 20)
    x = rng.normal(size=(80, 3, 8))
    x[:, 1, :4] += np.eye(4)[y] * 4  # only layer 1 knows the class
    probe = fit_layer_probe(x[::2], y[::2], 4, steps=100)
    assert (predict_layer_probe(probe, x[1::2]) == y[1::2]).mean() > 0.9
    assert int(torch.softmax(probe.weights, 0).argmax()) == 1


def test_exported_encoder_embeds_with_its_own_preprocessing(small, tmp_path, synthetic_dir):
    enc, ds = small
    enc.save_pretrained(tmp_path / "enc")
    back = Encoder.from_pretrained(tmp_path / "enc")
    assert back.adapter.config == enc.adapter.config  # sample rate, mel settings and statistics travel with it
    fresh = back.adapter.dataset({"root": str(synthetic_dir)}, train=False)
    a = embed_utterances(enc, ds, indices=[0, 1])["meanstd"]
    b = embed_utterances(back, fresh, indices=[0, 1])["meanstd"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    # negative control: other normalisation statistics give other embeddings
    import json

    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    cfg["adapter"]["mel_mean"] = [v + 1.0 for v in cfg["adapter"]["mel_mean"]]
    (tmp_path / "enc" / "config.json").write_text(json.dumps(cfg))
    changed = Encoder.from_pretrained(tmp_path / "enc")
    c = embed_utterances(changed, changed.adapter.dataset({"root": str(synthetic_dir)}, train=False), indices=[0, 1])["meanstd"]
    assert np.abs(a - c).max() > 1e-2
