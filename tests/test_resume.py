"""A stopped run resumes where it stopped, to the uninterrupted run's figures exactly.

Each case trains once uninterrupted (the reference), then the same config stopped at
some moment (an exception in the epoch callback or inside a training step, a real
SIGKILL, a full disk, a read-only folder) and resumed; metrics.json (timings aside), the
best checkpoint's tensors and the TensorBoard scalars must equal the reference's.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import corect.common.files
import corect.engine.training
from corect.config import Config
from corect.engine.checkpoints import TRAINING_STATE, can_resume, run_status
from corect.engine.training import train
from corect.train import main
from tests.conftest import TINY_DIMS, tiny_config

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "synthetic": {
        "train_dialogues": 12,  # 3 batches of 4
        "dev_dialogues": 4,
        "test_dialogues": 3,
        "min_length": 3,
        "max_length": 8,
        "dims": dict(TINY_DIMS),
        "noise": 0.5,  # learnable: the best epoch moves
    }
}
CASES = {
    "corect": {"train": {"epochs": 6, "lr": 5e-3}},
    "early": {"model": {"name": "early"}, "train": {"epochs": 6, "lr": 5e-3}},
    # The learning rate is cut at every epoch without a dev-loss gain; stops early at 8.
    "causal": {
        "model": {"causal": True},
        "train": {
            "epochs": 12,
            "lr": 5e-3,
            "scheduler_patience": 0,
            "early_stopping": 3,
            "modality_dropout": 0.3,
            "utterance_dropout": 0.2,
        },
    },
}
TIMINGS = ("seconds_per_epoch", "train_seconds")


def case_config(tmp_path: Path, case: str, run_name: str = "r", **train: object) -> Config:
    sections = {key: dict(value) for key, value in CASES[case].items()}
    sections["train"] = {**sections["train"], "run_name": run_name, **train}
    return tiny_config(tmp_path, data=DATA, **sections)


def run_dir_of(config: Config) -> Path:
    model = config.model.name + ("-causal" if config.model.causal else "")
    group = f"{config.data.modalities}--emotion--{model}"
    return Path(config.train.runs_dir) / "synthetic" / group / config.train.run_name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of a case (and epochs), trained once per module."""
    runs: dict[tuple[str, int | None], Path] = {}

    def get(case: str, epochs: int | None = None) -> Path:
        if (case, epochs) not in runs:
            extra = {} if epochs is None else {"epochs": epochs}
            config = case_config(tmp_path_factory.mktemp(case), case, "reference", **extra)
            runs[case, epochs] = train(config)
        return runs[case, epochs]

    return get


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Same figures (timings aside), same best checkpoint, same TensorBoard scalars; the
    resumed run completed and holds no training state or temporary file."""
    figures = [json.loads((run / "metrics.json").read_text()) for run in (resumed, reference)]
    for metrics in figures:
        for key in TIMINGS:
            metrics.pop(key)
    assert figures[0] == figures[1]
    first, second = (
        torch.load(r / "checkpoint.pt", weights_only=True) for r in (resumed, reference)
    )
    assert first["epoch"] == second["epoch"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for key, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][key]), key
    for tag in ("loss/train", "weighted_f1/dev", "lr"):  # every epoch, at its step
        assert scalars(resumed, tag) == scalars(reference, tag), tag
    assert run_status(resumed) == "completed" and not can_resume(resumed)
    assert not (resumed / TRAINING_STATE).exists()
    assert not [p.name for p in resumed.iterdir() if p.name.startswith(".")]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar over all the event files of a run, the last
    value written at a step winning (as TensorBoard's purge of a resumed run's steps)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    written: dict[int, tuple[float, float]] = {}
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag and event.wall_time >= written.get(event.step, (0, 0))[0]:
                    written[event.step] = (event.wall_time, value.simple_value)
    return [(step, written[step][1]) for step in sorted(written)]


def stop_at(*epochs: int):
    """An epoch callback that interrupts the run at the first of `epochs` it reaches."""
    todo = list(epochs)

    def callback(figures: dict[str, float]) -> None:
        if todo and figures["epoch"] == todo[0]:
            todo.pop(0)
            raise KeyboardInterrupt

    return callback


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_figures(tmp_path, reference):
    config = case_config(tmp_path, "corect")
    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_at(3))
    run_dir = run_dir_of(config)
    assert run_status(run_dir).startswith("stopped") and can_resume(run_dir)
    state = torch.load(run_dir / TRAINING_STATE, weights_only=True)  # plain types only
    assert state["progress"]["epoch"] == 3 and state["tensorboard_step"] == 3
    assert set(state["rng"]) >= {"python", "numpy", "torch", "generator"}
    assert state["config"] == config.to_dict()
    seen: list[float] = []
    assert train(config, on_epoch=lambda f: seen.append(f["epoch"]), resume=run_dir) == run_dir
    assert seen == [4, 5, 6]
    assert_same_run(run_dir, reference("corect"))


def test_a_baseline_killed_inside_an_epoch_redoes_that_epoch(tmp_path, reference, monkeypatch):
    config = case_config(tmp_path, "early")
    step, calls = corect.engine.training.train_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 11:  # epoch 4, batch 2
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(corect.engine.training, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(corect.engine.training, "train_step", step)
    run_dir = run_dir_of(config)
    assert torch.load(run_dir / TRAINING_STATE, weights_only=True)["progress"]["epoch"] == 3
    train(config, resume=run_dir)
    assert_same_run(run_dir, reference("early"))


def test_a_causal_run_stopped_twice_keeps_its_scheduler_and_early_stopping(tmp_path, reference):
    config = case_config(tmp_path, "causal")
    callback = stop_at(2, 5)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            train(config, on_epoch=callback, resume=None if _ == 0 else run_dir_of(config))
    figures: list[dict[str, float]] = []
    train(config, on_epoch=figures.append, resume=run_dir_of(config))
    metrics = json.loads((run_dir_of(config) / "metrics.json").read_text())
    assert metrics["epochs_run"] < config.train.epochs  # it did stop early
    assert figures[0]["lr"] < config.train.lr  # the scheduler had cut it before the stop
    assert_same_run(run_dir_of(config), reference("causal"))


def test_a_run_killed_while_scoring_the_best_epoch_finishes(tmp_path, reference, monkeypatch):
    config = case_config(tmp_path, "early")
    finish = corect.engine.training.finish_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corect.engine.training, "finish_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(corect.engine.training, "finish_run", finish)
    seen: list[float] = []
    train(config, on_epoch=seen.append, resume=run_dir_of(config))
    assert seen == []  # every epoch was done: straight to scoring
    assert_same_run(run_dir_of(config), reference("early"))


def test_a_sigkilled_training_process_resumes_to_the_same_figures(tmp_path, reference, capsys):
    config = case_config(tmp_path, "early")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir = run_dir_of(config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the threads of this process (conftest)
    command = [sys.executable, "-m", "corect.train", "--config", str(path), "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run_dir / TRAINING_STATE).exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert process.poll() is None, "the training process ended before it could be killed"
    process.send_signal(signal.SIGKILL)  # somewhere in epoch 2 or later
    process.wait()
    assert not (run_dir / "metrics.json").exists()
    assert run_status(run_dir).startswith("interrupted") and can_resume(run_dir)
    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    assert_same_run(run_dir, reference("early"))


def test_a_resume_may_extend_the_epochs(tmp_path, reference, capsys):
    config = case_config(tmp_path, "early", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_at(2))
    run_dir = run_dir_of(config)
    assert main(["--resume", str(run_dir), "--set", "train.epochs=7", "--quiet"]) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 7
    assert_same_run(run_dir, reference("early", 7))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_completed_run_is_left_as_it_is(reference, capsys, caplog):
    run_dir = reference("early")
    before = snapshot(run_dir)
    assert main(["--resume", str(run_dir), "--set", "train.epochs=9"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    assert "already completed" in caplog.text
    assert snapshot(run_dir) == before


@pytest.fixture
def stopped_run(tmp_path) -> Path:
    config = case_config(tmp_path, "early", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_at(2))
    return run_dir_of(config)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--set", "model.hidden_size=8", "train.lr=0.01", "train.epochs=5"],
            "another config: model.hidden_size (the run's 16, given 8), train.lr (the run's "
            "0.005, given 0.01); only train.epochs and train.progress may change",
        ),
        (["--config", "OTHER", "--device", "cpu"], "another config: train.device (the run's"),
        (["--set", "train.epochs=1"], "has already trained 2 epochs; give train.epochs=2"),
    ],
)
def test_a_resume_with_another_config_is_refused_naming_the_keys(
    stopped_run, tmp_path, capsys, arguments, message
):
    other = tmp_path / "other.yaml"
    other.write_text((stopped_run / "config.yaml").read_text())
    before = snapshot(stopped_run)
    arguments = [str(other) if a == "OTHER" else a for a in arguments]
    assert main(["--resume", str(stopped_run), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert snapshot(stopped_run) == before


def test_runs_without_a_state_or_being_trained_are_not_resumed(stopped_run, capsys):
    status = json.loads((stopped_run / "run.json").read_text())
    (stopped_run / "run.json").write_text(
        json.dumps({**status, "status": "running", "pid": os.getppid()})
    )
    assert main(["--resume", str(stopped_run)]) == 2
    assert f"is being trained by process {os.getppid()}" in capsys.readouterr().err
    (stopped_run / TRAINING_STATE).unlink()
    assert not can_resume(stopped_run)
    assert main(["--resume", str(stopped_run)]) == 2
    assert "cannot be resumed: it has no training_state.pt" in capsys.readouterr().err
    assert main(["--resume", str(stopped_run / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


# --- a full disk, a read-only folder ------------------------------------------------------


def fail_writes(monkeypatch, run_dir: Path, after_states: int, error: int) -> dict[str, bytes]:
    """From the first write into `run_dir` after `after_states` training states, every
    write there fails with `error`: ENOSPC from the kernel (the file is opened on
    /dev/full), EROFS or EACCES when the temporary file is made. Returns the files of
    `run_dir` as they were just before the first failure."""
    states, before = [], {}
    open_file, mkstemp = pathlib.Path.open, corect.common.files.tempfile.mkstemp

    def failing() -> bool:
        if len(states) < after_states:
            return False
        if not before:
            before.update(snapshot(run_dir))
        return True

    def fake_open(self, mode="r", *args, **kwargs):
        if self.parent == run_dir and "w" in mode and self.name.startswith("."):
            if error == errno.ENOSPC and failing():
                return open_file(Path("/dev/full"), mode, *args, **kwargs)
            if self.name.startswith(f".{TRAINING_STATE}.tmp"):
                states.append(1)
        return open_file(self, mode, *args, **kwargs)

    def fake_mkstemp(*args, dir=None, **kwargs):
        if Path(dir) == run_dir and error != errno.ENOSPC and failing():
            raise OSError(error, os.strerror(error))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", fake_open)
    monkeypatch.setattr(corect.common.files.tempfile, "mkstemp", fake_mkstemp)
    return before


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_full_disk_or_read_only_folder_is_named_and_keeps_the_last_state(
    tmp_path, reference, capsys, monkeypatch, error, why
):
    config = case_config(tmp_path, "early")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    run_dir = run_dir_of(config)
    before = fail_writes(monkeypatch, run_dir, 3, error)
    assert main(["--config", str(path), "--quiet"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: {run_dir}/") and f"cannot be written: {why}" in message
    assert "its previous version is kept" in message
    monkeypatch.undo()  # space freed, folder writable again
    after = snapshot(run_dir)
    assert before[TRAINING_STATE] == after[TRAINING_STATE]  # the state of epoch 3, intact
    assert before["checkpoint.pt"] == after["checkpoint.pt"]
    assert torch.load(run_dir / TRAINING_STATE, weights_only=True)["progress"]["epoch"] == 3
    torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert not [name for name in after if name.startswith(".")]  # no partial file left
    assert can_resume(run_dir)
    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    assert_same_run(run_dir, reference("early"))


def dead_run(folder: Path, *files: str, status: str = "running") -> Path:
    """A run folder as a process that died (pid 2**22 + 1 runs nowhere) left it."""
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("x")
    record = {"status": status, "host": corect.common.files.HOST, "pid": 2**22 + 1}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_a_dead_run_without_a_state_gives_its_name_back_and_others_are_kept(tmp_path):
    from corect.engine.checkpoints import clear_dead_run

    killed = dead_run(tmp_path / "killed", "checkpoint.pt", ".training_state.pt.tmp-x-1-ab")
    assert clear_dead_run(killed) and not killed.exists()
    with_state = dead_run(tmp_path / "with-state", TRAINING_STATE)
    done = dead_run(tmp_path / "done", "checkpoint.pt", status="completed")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.yaml").write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert not clear_dead_run(with_state) and (with_state / TRAINING_STATE).exists()
    assert not clear_dead_run(done) and (done / "checkpoint.pt").exists()
    assert not clear_dead_run(foreign) and (foreign / "notes.txt").exists()
    assert clear_dead_run(config_only) and not config_only.exists()
