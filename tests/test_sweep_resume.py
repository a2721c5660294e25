"""Multi-run commands continue the run that was in progress: a benchmark or a comparison
run again with the same output resumes it (figures of an uninterrupted run), retrains a
leftover that cannot be resumed, and a Ray Tune trial restored from its checkpoint
continues at the right epoch (the Ray end of it: tests/test_ray.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from corect.common.files import HOST, write_json_atomic
from corect.config import Config, save_config
from corect.engine.checkpoints import RUN_STATUS, TRAINING_STATE, can_resume, run_status
from corect.engine.training import train
from corect.experiments import compare as compare_module
from corect.experiments.benchmark import run_benchmark, run_config
from corect.experiments.compare import compare
from corect.experiments.trials import restore_trial, trial_folders
from tests.conftest import TINY_DIMS, tiny_config
from tests.test_benchmark import fake_train

TINY = [
    "data.synthetic.train_dialogues=6",
    "data.synthetic.dev_dialogues=3",
    "data.synthetic.test_dialogues=3",
    "data.synthetic.min_length=3",
    "data.synthetic.max_length=8",
    f"data.synthetic.dims={json.dumps(TINY_DIMS)}",
    "train.epochs=3",
    "train.batch_size=4",
    "train.lr=0.001",
    "train.device=cpu",
    "train.figures=false",
    "model.hidden_size=16",
    "model.gnn_heads=2",
    "model.pcm_layers=1",
    "model.pcm_self_layers=1",
    "model.encoder_layers=1",
]


def tiny(tmp_path: Path) -> list[str]:
    return [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]


class Interrupted(Exception):
    """Stands in for a kill after an epoch."""


def stop_after(epoch: int):
    def on_epoch(figures: dict[str, float]) -> None:
        if figures["epoch"] == epoch:
            raise Interrupted(f"stopped after epoch {epoch}")

    return on_epoch


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def as_killed(run_dir: Path) -> None:
    """Make `run_dir` look like a run whose process was killed (SIGKILL: no last word)."""
    write_json_atomic(run_dir / RUN_STATUS, {"status": "running", "host": HOST, "pid": dead_pid()})
    assert run_status(run_dir).startswith("interrupted")


def without_timings(table: str) -> str:
    """A benchmark table without its seconds-per-epoch column."""
    return re.sub(r"\| [0-9.]+ \| `", "| - | `", table)


def test_a_benchmark_resumes_the_run_it_was_training(tmp_path: Path, caplog) -> None:
    models, seeds = ["early", "late"], [1]
    reference = run_benchmark(None, models, seeds, tiny(tmp_path), tmp_path / "whole")

    out = tmp_path / "interrupted"

    def killed_in_the_second_run(config: Config) -> Path:
        stop = stop_after(1) if config.model.name == "late" else None
        return train(config, on_epoch=stop)

    with pytest.raises(RuntimeError, match="model 'late'.*stopped after epoch 1"):
        run_benchmark(None, models, seeds, tiny(tmp_path), out, train_fn=killed_in_the_second_run)
    (left,) = out.glob("runs/*/*/late-seed1")
    as_killed(left)
    assert can_resume(left)

    with caplog.at_level(logging.INFO, logger="corect"):
        again = run_benchmark(None, models, seeds, tiny(tmp_path), out)
    (done,) = out.glob("runs/*/*/early-seed1")
    assert f"reusing the finished run {done}" in caplog.text
    assert f"resuming the unfinished run {left} (interrupted" in caplog.text
    assert "resuming" in caplog.text and "after epoch 1" in caplog.text  # from epoch 2 on
    assert not (left / TRAINING_STATE).exists() and run_status(left) == "completed"
    assert without_timings(again.table()) == without_timings(reference.table())
    for mine, theirs in zip(again.results, reference.results, strict=True):
        assert mine.run_dir == theirs.run_dir
        for split in ("dev", "test"):  # bit-identical figures, the resumed run's included
            assert mine.metrics[split] == theirs.metrics[split]
        assert mine.metrics["best_epoch"] == theirs.metrics["best_epoch"]
    assert json.loads((out / "results.json").read_text())["complete"] is True


def test_a_leftover_that_cannot_be_resumed_is_trained_again(tmp_path: Path, caplog) -> None:
    config = run_config(None, [], "early", 1, tmp_path / "runs")
    left = tmp_path / "runs" / "early-seed1"  # where fake_train puts it, killed in epoch 1
    left.mkdir(parents=True)
    save_config(config, left / "config.yaml")
    (left / "events.out.tfevents.0").write_bytes(b"")
    as_killed(left)
    assert not can_resume(left)
    trained: list[str] = []

    def counting(config: Config) -> Path:
        trained.append(config.train.run_name)
        return fake_train(config)

    with caplog.at_level(logging.INFO, logger="corect"):
        bench = run_benchmark(None, ["early"], [1], [], tmp_path, train_fn=counting)
    assert trained == ["early-seed1"]
    assert f"removing {left} (interrupted" in caplog.text
    assert bench.results[0].run_dir == "runs/early-seed1"  # its own name, not early-seed1-1
    assert not (left / "events.out.tfevents.0").exists() and (left / "metrics.json").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["early-seed1"]


def test_a_run_another_process_trains_is_refused(tmp_path: Path) -> None:
    config = run_config(None, [], "early", 1, tmp_path / "runs")
    busy = tmp_path / "runs" / "early-seed1"
    busy.mkdir(parents=True)
    save_config(config, busy / "config.yaml")
    write_json_atomic(busy / RUN_STATUS, {"status": "running", "host": HOST, "pid": os.getppid()})
    with pytest.raises(ValueError, match=f"still being trained by process {os.getppid()}"):
        run_benchmark(None, ["early"], [1], [], tmp_path, train_fn=fake_train)
    assert (busy / "config.yaml").is_file() and not (busy / "metrics.json").exists()


def test_compare_modes_resumes_with_the_same_out(tmp_path: Path, monkeypatch, caplog) -> None:
    overrides = [*tiny(tmp_path), "train.epochs=2", f"train.runs_dir={tmp_path / 'runs'}"]
    out = tmp_path / "c"

    def killed_in_the_causal_run(config: Config, **options) -> Path:
        return train(config, on_epoch=stop_after(1) if config.model.causal else None, **options)

    monkeypatch.setattr(compare_module, "train", killed_in_the_causal_run)
    with pytest.raises(Interrupted):
        compare(None, [1], overrides, out_dir=out)
    monkeypatch.setattr(compare_module, "train", train)
    with caplog.at_level(logging.INFO, logger="corect"):
        result = compare(None, [1], overrides, out_dir=out)
    offline, causal = (Path(r.run_dir) for r in result.runs)
    assert f"reusing the finished run {offline}" in caplog.text
    assert f"resuming the unfinished run {causal}" in caplog.text
    assert offline.name == causal.name  # the names the first attempt chose
    assert json.loads((out / "results.json").read_text())["complete"] is True


def test_a_tune_trial_restored_from_its_checkpoint_continues(tmp_path: Path) -> None:
    """run_trial's path without Ray: epochs reported with the run folder as checkpoint
    (copied, as Tune does), a failure in epoch 2, the trial restored from the epoch-1
    checkpoint: it reports epochs 2 and 3, and ends with an uninterrupted trial's figures."""
    config = tiny_config(tmp_path, train={"epochs": 3, "run_name": "trial-a"})
    config.train.runs_dir = str(tmp_path / "trials")
    saved = tmp_path / "tune-checkpoints"

    def report(figures: dict[str, float]) -> None:
        if figures["epoch"] == 2:
            raise Interrupted("a lost worker")
        (run_dir,) = trial_folders(config)
        shutil.copytree(run_dir, saved / str(int(figures["epoch"])))

    with pytest.raises(Interrupted):
        train(config, on_epoch=report, test=False)
    (run_dir,) = trial_folders(config)
    assert can_resume(run_dir)  # its state is that of epoch 2, Tune's checkpoint epoch 1
    reported: list[dict[str, float]] = []
    resumed = restore_trial(saved / "1", config)
    assert resumed == run_dir and run_status(run_dir).startswith("stopped")
    assert train(config, on_epoch=reported.append, test=False, resume=resumed) == run_dir
    assert [f["epoch"] for f in reported] == [2, 3]

    whole = tiny_config(tmp_path, train={"epochs": 3, "run_name": "trial-b"})
    whole.train.runs_dir = str(tmp_path / "trials")
    expected: list[dict[str, float]] = []
    reference = train(whole, on_epoch=expected.append, test=False)
    assert reported == expected[1:]
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference)]
    assert metrics[0]["dev"] == metrics[1]["dev"] and "test" not in metrics[0]

    shutil.rmtree(run_dir.parent)  # gone: the checkpoint is put back where training puts it
    assert restore_trial(saved / "1", config) == run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        p.name for p in (saved / "1").iterdir()
    )
