"""The synthetic generator (labels, speakers, trivial features near chance) and the real FSDD folder."""
from __future__ import annotations

import re
import warnings

import numpy as np
import soundfile as sf
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from foundation.sources import find_sources
from modalities.base import adapter_from_config
from modalities.speech import features
from modalities.speech.synthetic import WORDS, write_synthetic


def test_generator_writes_labelled_words_and_speakers(tmp_path):
    a = adapter_from_config("speech", {})
    data = a.synthetic(tmp_path, 40, seed=3)
    files = sorted(tmp_path.glob("*.wav"))
    assert len(files) == 40 and data["labels"] == "pattern:^(\\d)_"
    words = {re.match(r"^(\d)_", f.name).group(1) for f in files}
    speakers = {re.match(r"^\d_([a-z]+)_", f.name).group(1) for f in files}
    assert len(words) == len(WORDS) and len(speakers) == 4
    ds = a.dataset(data, train=True)
    assert ds.classes == [str(i) for i in range(10)] and a.config["sample_rate"] == 16000
    info = sf.info(files[0])
    assert info.samplerate == 16000 and info.subtype == "PCM_16"
    # same seed, same files
    again = tmp_path / "again"
    a.synthetic(again, 40, seed=3)
    assert (again / files[5].name).read_bytes() == files[5].read_bytes()


def test_trivial_features_do_not_identify_the_word(tmp_path):
    """Per-clip mean, loudness and length say little about the word on unseen speakers; the
    time-frequency content (here log-mel statistics) says more, and order says the rest."""
    write_synthetic(tmp_path, 300, seed=1, sample_rate=8000, n_speakers=4)
    files = sorted(tmp_path.glob("*.wav"))
    y = np.array([int(f.name[0]) for f in files])
    spk = np.array([f.name.split("_")[1] for f in files])
    trivial, spectral = [], []
    for f in files:
        x, rate = sf.read(f, dtype="float32")
        trivial.append([x.mean(), x.std(), len(x) / rate])
        n_mels, high = features.resolve_mel(rate, None, 20.0, None, 25.0)
        s = features.log_mel(torch.from_numpy(x), rate, n_mels, 20.0, high, 25.0, 10.0)
        spectral.append(torch.cat([s.mean(0), s.std(0)]).numpy())
    train = np.isin(spk, sorted(set(spk))[:3])

    def acc(x):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(np.asarray(x)[train], y[train])
        return clf.score(np.asarray(x)[~train], y[~train])

    a_trivial, a_spectral = acc(trivial), acc(spectral)
    assert a_trivial < 0.22, a_trivial  # chance is 0.1
    assert a_spectral > a_trivial + 0.1


def test_real_fsdd_folder(fsdd):
    a = adapter_from_config("speech", {})
    ds = a.dataset({"root": str(fsdd), "labels": "pattern:^(\\d)_"}, train=False)
    assert len(ds) == 2000 and ds.classes == [str(d) for d in range(10)]
    assert a.config["sample_rate"] == 8000 and a.config["high_freq"] == 4000.0
    assert int(features.band_bins(a.config["n_mels"], 8000, 25.0, 20.0, 4000.0).min()) >= features.MIN_BINS_PER_BAND
    speakers = {s.label for s in find_sources(fsdd, labels="pattern:^\\d_([a-z]+)_", extensions=(".wav",))}
    assert speakers == {"jackson", "nicolas", "theo", "yweweler"}
    for i in (0, 777, 1999):
        s = ds[i]
        assert s.label == int(ds.segments[i].path.rsplit("/", 1)[-1][0])
        assert torch.isfinite(s.patches).all() and (~s.padding).sum() >= 1
        assert s.patches.shape[1] == a.patch_dim and s.coords.shape[1] == 2
