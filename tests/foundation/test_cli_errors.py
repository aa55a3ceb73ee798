"""Errors for people: a problem the user can fix is one line on stderr (what, which file or key, the way out) and
exit code 1; `-v` adds the traceback; argparse usage errors keep exit code 2; a bug keeps its traceback."""
from __future__ import annotations

import numpy as np
import pytest

from foundation import cli
from foundation.recipes import RecipeError
from modalities.base import adapter_from_config


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("domainfm ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_adapter_value_of_the_wrong_kind_names_its_key(capsys):
    code, _, err = run(capsys, "pretrain", "speech-mae", "adapter.max_seconds=abc")
    assert code == 1 and one_line(err) == "domainfm pretrain: adapter.max_seconds expects a number, got 'abc'"
    code, out, _ = run(capsys, "pretrain", "speech-mae", "adapter.max_seconds=3", "--print-config")  # control
    assert code == 0 and "max_seconds: 3.0" in out
    code, _, err = run(capsys, "pretrain", "speech-mae", "adapter.max_secnds=3")
    assert code == 1 and "adapter.max_secnds" in one_line(err) and "Did you mean adapter.max_seconds" in err


def test_adapter_configs_are_checked_like_recipes_wherever_they_come_from():
    """An exported config.json or Python code builds adapters through the same check."""
    with pytest.raises(RecipeError, match="adapter.max_seconds expects a number, got 'abc'"):
        adapter_from_config("speech", {"max_seconds": "abc"})
    with pytest.raises(RecipeError, match=r"adapter.patch expects a list such as \[4, 4\], got 4"):
        adapter_from_config("grid", {"patch": 4})
    assert adapter_from_config("speech", {"max_seconds": 3}).config["max_seconds"] == 3.0  # control: a whole number is a number


def test_a_missing_data_folder_is_one_line_and_v_shows_the_traceback(capsys, tmp_path):
    argv = ["pretrain", "grid-mae", f"data.root={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'run'}", "--quiet"]
    code, _, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 1 and f"data.root {tmp_path / 'nowhere'} does not exist" in line and "data.manifest=FILE" in line
    code, _, err = run(capsys, *argv, "-v")  # control: the same error with -v shows where it came from
    assert code == 1 and "Traceback" in err and "find_sources" in err and err.strip().splitlines()[-1] == line


def test_unreadable_files_name_the_file_and_the_way_out(capsys, tmp_path):
    data = tmp_path / "clips"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.wav").write_bytes(np.random.default_rng(i).bytes(2000))
    code, _, err = run(capsys, "pretrain", "speech-mae", f"data.root={data}", f"run.dir={tmp_path / 'run'}", "--quiet")
    line = one_line(err)
    # "not a .wav file": the bad-input policy's magic-byte check names it before libsndfile is asked
    assert code == 1 and f"{data / '0.wav'}: not a .wav file" in line and "data.on_error=skip" in line
    # control: under data.on_error=skip they are skipped, and the way out offered is no longer the skip itself
    code, _, err = run(capsys, "pretrain", "speech-mae", f"data.root={data}", f"run.dir={tmp_path / 'run'}", "--quiet", "data.on_error=skip")
    line = one_line(err)
    assert code == 1 and "no readable audio among 3 file(s)" in line and "add data.on_error=skip" not in line


def test_a_missing_export_or_run_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "embed", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "e.npz"))
    assert code == 1 and "holds neither an exported encoder nor a checkpoint" in one_line(err) and "domainfm pretrain" in err
    code, _, err = run(capsys, "export", str(tmp_path / "no-run"), str(tmp_path / "out"))
    assert code == 1 and "holds neither an exported encoder nor a checkpoint" in one_line(err)


def test_usage_errors_exit_2_and_bugs_keep_their_traceback(capsys, monkeypatch):
    with pytest.raises(SystemExit) as usage:
        cli.main(["pretrain"])  # no recipe: argparse's usage error
    assert usage.value.code == 2 and "usage: domainfm pretrain" in capsys.readouterr().err
    from foundation.engine import TrainingDiverged

    def diverged(args):
        raise TrainingDiverged("non-finite loss nan at step 3; last good checkpoint: runs/x/checkpoints/step_2")

    monkeypatch.setattr(cli, "cmd_recipes", diverged)
    code, _, err = run(capsys, "recipes")
    assert code == 1 and one_line(err) == "domainfm recipes: non-finite loss nan at step 3; last good checkpoint: runs/x/checkpoints/step_2"

    def bug(args):
        raise KeyError("a bug, not the user's problem")

    monkeypatch.setattr(cli, "cmd_recipes", bug)  # control: not a user-facing error, so not swallowed into one line
    with pytest.raises(KeyError):
        cli.main(["recipes"])


def test_a_broken_export_names_the_file_and_the_way_out(capsys, tmp_path):
    from foundation.model import Encoder

    out = Encoder.build(adapter_from_config("grid", {}), {"width": 16, "depth": 1, "heads": 2}).save_pretrained(tmp_path / "exp")
    assert Encoder.from_pretrained(out) is not None  # control: the intact export loads
    (out / "model.safetensors").unlink()
    code, _, err = run(capsys, "embed", str(out), str(tmp_path), "--out", str(tmp_path / "e.npz"))
    assert code == 1 and f"{out / 'model.safetensors'}: weights file not found" in one_line(err) and "domainfm export RUN_DIR OUT_DIR" in err
    (out / "config.json").write_text("{not json")
    code, _, err = run(capsys, "embed", str(out), str(tmp_path), "--out", str(tmp_path / "e.npz"))
    assert code == 1 and f"{out / 'config.json'}: not valid JSON" in one_line(err)


def test_a_label_pattern_that_does_not_match_names_the_file(capsys, tmp_path):
    from modalities.grid.adapter import GridAdapter

    GridAdapter().synthetic(tmp_path / "data", 8, seed=0)
    from foundation.sources import find_sources

    assert find_sources(tmp_path / "data", labels="folder", extensions=[".npy"])  # control: the folder rule reads them
    code, _, err = run(capsys, "pretrain", "grid-mae", f"data.root={tmp_path / 'data'}", "data.labels=pattern:^(zz)",
                       f"run.dir={tmp_path / 'run'}", "--quiet")
    line = one_line(err)
    assert code == 1 and ".npy: data.labels pattern '^(zz)' does not match the file name" in line and "first group" in line


def test_an_error_reraised_from_a_dataloader_worker_is_still_one_line():
    """torch re-raises a worker's error as ``type(err)(message with the worker's traceback)``."""
    from modalities.speech.io import AudioReadError

    from foundation.errors import DataError

    wrapped = ("Caught AudioReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nmodalities.speech.io.AudioReadError: /d/1.wav: not a readable audio file')
    assert cli.user_message(AudioReadError(wrapped)) == \
        "/d/1.wav: not a readable audio file (fix or remove the file, or add data.on_error=skip to skip unreadable files)"
    worker = DataError(wrapped.replace("AudioReadError", "DataError"))  # one argument: what torch passes back
    assert cli.user_message(worker) == "/d/1.wav: not a readable audio file"
    assert cli.user_message(DataError("/d/2.wav", "empty", "remove it")) == "/d/2.wav: empty (remove it)"  # control: the usual form
