"""Export files as teammates receive them: readable under the user's umask, and weights that are not
safetensors (a pickle put in place of model.safetensors) refused with a message that says so."""
import os
import pickle

import pytest
import torch

from foundation.errors import DomainfmError
from foundation.model import Encoder
from modalities.grid.adapter import GridAdapter


def tiny() -> Encoder:
    torch.manual_seed(0)
    return Encoder(GridAdapter({"patch": [4, 4]}), width=16, depth=1, heads=2).eval()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_export_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tiny().save_pretrained(tmp_path / "m", modules={"head": torch.nn.Linear(16, 3)})
    finally:
        os.umask(old)
    files = sorted(p for p in out.rglob("*"))
    assert {p.name for p in files} >= {"model.safetensors", "head.safetensors", "config.json", "README.md"}
    for p in files:
        assert oct(p.stat().st_mode & 0o777) == oct((0o777 if p.is_dir() else 0o666) & ~mask), p
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~mask)


def test_a_pickle_in_place_of_the_weights_is_named_as_one(tmp_path):
    enc = tiny()
    out = enc.save_pretrained(tmp_path / "m")
    Encoder.from_pretrained(out)  # control: the real file loads
    torch.save(enc.state_dict(), out / "model.safetensors")  # torch's zip pickle
    with pytest.raises(DomainfmError, match=r"model.safetensors: this is a torch.save zip archive \(a pickle\), not safetensors; "
                                            r"domainfm loads only safetensors"):
        Encoder.from_pretrained(out)
    (out / "model.safetensors").write_bytes(pickle.dumps({k: v.numpy() for k, v in enc.state_dict().items()}))  # a bare pickle
    with pytest.raises(DomainfmError, match="this is a pickle, not safetensors; domainfm loads only safetensors"):
        Encoder.from_pretrained(out)


def test_weights_that_do_not_match_the_config_are_an_error(tmp_path):
    from foundation.model import load_module

    out = tiny().save_pretrained(tmp_path / "m", modules={"head": torch.nn.Linear(16, 3)})
    load_module(out, "head", torch.nn.Linear(16, 3))
    with pytest.raises(DomainfmError, match="missing"):
        load_module(out, "head", torch.nn.Sequential(torch.nn.Linear(16, 3)))
    with pytest.raises(DomainfmError, match="holds no module 'towers.text'"):
        load_module(out, "towers.text", torch.nn.Linear(16, 3))
