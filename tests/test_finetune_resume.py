"""Resumable fine-tuning (data_prep.finetune_text --resume): a run stopped at an epoch's
end, mid-epoch or during its final save, then resumed, makes the model an uninterrupted
run makes, bit for bit; resuming with other settings is refused, naming them."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from corect.common.files import WriteError
from data_prep import finetune_text as ft
from data_prep.finetuning import resume, saving
from data_prep.finetuning.config import FinetuneConfig, FinetuneError
from data_prep.finetuning.resume import can_resume, load_state, state_path
from data_prep.finetuning.run import finetune
from data_prep.finetuning.training import Trainer
from tests.test_finetune_text import tiny_bert, tiny_dataset

SETTINGS = {"mode": "full", "epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}
# 40 train utterances in batches of 8: 5 steps an epoch, 15 in all.


class Stop(Exception):
    """Stands for a kill: the run ends where it is, without any clean-up of its own."""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def run(data: Path, base: Path, out: Path, **settings):
    return finetune(FinetuneConfig(data=data, out=out, model=base, **{**SETTINGS, **settings}))


def stopped(monkeypatch, at_step: int, *args, **settings) -> None:
    """Run, stopping just before optimizer step `at_step` + 1 (its state as last saved)."""
    original = Trainer.train_step

    def train_step(self, *step_args):
        if self.step == at_step:
            raise Stop
        return original(self, *step_args)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", train_step)
        with pytest.raises(Stop):
            run(*args, **settings)


def contents(out: Path) -> dict[str, bytes]:
    """Every file of a model directory, its record without the timings."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    record = json.loads(files.pop("corect_finetune.json"))
    record.pop("time")
    for epoch in record["history"]:
        del epoch["train_seconds"], epoch["dev_seconds"]
    return {**files, "record": json.dumps(record, sort_keys=True).encode()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data, base):
    """The model directory contents of uninterrupted runs, by mode."""
    made = {}

    def get(mode: str) -> dict[str, bytes]:
        if mode not in made:
            out = tmp_path_factory.mktemp(mode) / "model"
            run(data, base, out, mode=mode)
            assert not can_resume(out)  # the state is removed once the model is written
            made[mode] = contents(out)
        return made[mode]

    return get


@pytest.mark.parametrize(
    ("mode", "every", "stops"),
    [
        ("full", 0, [5]),  # in epoch 2's first step: from the state saved after epoch 1
        ("full", 3, [7, 14]),  # mid-epoch, twice: from steps 6 and 12, batches done skipped
        ("lora", 2, [8]),  # adapters, their dropout
    ],
)
def test_a_resumed_run_makes_the_uninterrupted_model(
    mode, every, stops, uninterrupted, data, base, tmp_path, monkeypatch
):
    if mode == "lora":
        pytest.importorskip("peft")
    out = tmp_path / "model"
    for k, step in enumerate(stops):
        stopped(monkeypatch, step, data, base, out, mode=mode, save_every_steps=every, resume=k > 0)
        assert not out.exists() and can_resume(out)
        last_save = max(step // every * every if every else 0, step // 5 * 5)  # or epoch end
        assert load_state(state_path(out))["step"] == last_save
    result = run(data, base, out, mode=mode, save_every_steps=every, resume=True)
    assert contents(out) == uninterrupted(mode)
    assert result.record["steps"] == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # state and debris gone


def test_a_kill_during_the_final_save_resumes_to_the_same_model(
    uninterrupted, data, base, tmp_path, monkeypatch
):
    out = tmp_path / "model"

    def killed(tensors, path):
        Path(path).write_bytes(b"partial")
        raise Stop

    with monkeypatch.context() as patch:
        patch.setattr(saving, "save_file", killed)
        with pytest.raises(Stop):
            run(data, base, out)
    assert not out.exists()  # no model rather than a partial one
    assert load_state(state_path(out))["position"]["epoch"] == 4  # training was over
    run(data, base, out, resume=True)
    assert contents(out) == uninterrupted("full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_resume_with_other_settings_or_no_state_is_refused(
    uninterrupted, data, base, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "model"
    with pytest.raises(FinetuneError, match=r"no saved state .*model\.resume\.pt"):
        run(data, base, out, resume=True)
    stopped(monkeypatch, 3, data, base, out, save_every_steps=2)
    saved = state_path(out).read_bytes()
    with pytest.raises(FinetuneError, match=r"--epochs 3 \(now 4\); --lr 0\.003 \(now 0\.001\)\."):
        run(data, base, out, resume=True, lr=1e-3, epochs=4)
    other = tmp_path / "other_data"
    shutil.copytree(data, other)
    texts = json.loads((other / "dev.texts.json").read_text())
    texts[0][0] = "great fun fun"
    (other / "dev.texts.json").write_text(json.dumps(texts))
    with pytest.raises(FinetuneError, match="utterances of --data changed"):
        run(other, base, out, resume=True)
    argv = ["--data", str(data), "--model", str(base), "--out", str(out), "--quiet"]
    assert ft.main([*argv, "--resume", "--lr", "0.01", "--epochs", "3", "--batch-size", "8"]) == 2
    assert "error: --resume:" in capsys.readouterr().err
    assert state_path(out).read_bytes() == saved  # a refused resume changes nothing
    # --save-every-steps and --quiet are free to change.
    run(data, base, out, resume=True, save_every_steps=4)
    assert contents(out) == uninterrupted("full")
    # Resuming a finished run does nothing.
    before = (out / "model.safetensors").stat().st_mtime_ns
    result = run(data, base, out, resume=True)
    assert result.record["steps"] == 15
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_a_fresh_run_over_a_saved_state_starts_over(
    uninterrupted, data, base, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "model"
    stopped(monkeypatch, 8, data, base, out, lr=1e-2, save_every_steps=2)
    capsys.readouterr()
    run(data, base, out)
    assert "starts over" in capsys.readouterr().err
    assert contents(out) == uninterrupted("full") and not can_resume(out)
    state_path(out).write_bytes(b"not a state")
    with pytest.raises(FinetuneError, match="not a readable fine-tuning state"):
        run(data, base, tmp_path / "model", resume=True)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        PermissionError(errno.EACCES, "Permission denied"),
        RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
    ],
)
def test_a_failed_state_save_names_the_file_and_keeps_the_previous_state(
    error, data, base, tmp_path, monkeypatch
):
    out = tmp_path / "model"
    calls = []
    original = torch.save

    def save(state, path):
        calls.append(state["step"])
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise error
        original(state, path)

    monkeypatch.setattr(resume.torch, "save", save)
    with pytest.raises(WriteError, match=r"model\.resume\.pt: cannot be written: .*previous"):
        run(data, base, out, save_every_steps=2)
    assert calls == [2, 4]
    assert load_state(state_path(out))["step"] == 2  # the previous state, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.resume.pt"]  # no debris
