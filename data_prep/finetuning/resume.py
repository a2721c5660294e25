"""Resumable fine-tuning: the full state of a run, saved every ``--save-every-steps``
steps and after each epoch, and read back by ``--resume`` (:class:`Checkpoint`).

The state is one file beside the model directory, ``<out>.resume.pt`` (:func:`state_path`),
replaced atomically at each save: a ``torch.save`` of plain dicts, lists, numbers and
tensors, read back with ``torch.load(weights_only=True)``. It holds the weights that train
(full: the encoder; lora: the adapters; frozen: none) and the head, the optimizer, the
schedule and the loss scaler, the step, the epoch under way with its batches done and
their loss sums, the batch-order generator's state before that epoch's batches were drawn
(a resumed run redraws the same batches and skips those done), the RNG states (Python,
NumPy, torch CPU and CUDA), the history of the epochs with the best dev record and its
weights, and what identifies the run (:func:`run_identity`). So a resumed run makes the
model an uninterrupted one makes, bit for bit on the CPU. Saving draws no random numbers.

The model directory is written only at the end, and the state file is removed once it is
complete, so an unfinished run is never taken for a finished model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corect.common.files import atomic_target, read_json
from corect.data.text_model import RECORD_FILE
from data_prep.finetuning.config import FinetuneConfig, FinetuneError
from data_prep.finetuning.saving import recorded_settings
from data_prep.finetuning.training import FitOutcome, Position, Trainer
from data_prep.finetuning.utterances import Utterances

STATE_SUFFIX = ".resume.pt"
FORMAT = 1  # of the state file; another one is refused


def state_path(out: Path) -> Path:
    """Where the resumable state of the run writing the model directory `out` goes."""
    out = Path(out)
    return out.with_name(out.name + STATE_SUFFIX)


def can_resume(out: Path) -> bool:
    """Whether a run writing `out` was stopped after saving its state (``--resume`` works)."""
    return state_path(out).is_file()


def run_identity(
    config: FinetuneConfig, device: torch.device, base_dir: Path, train: Utterances, dev: Utterances
) -> dict[str, Any]:
    """What a resumed run must share with the saved one: the settings that shape the
    model (the device as resolved), the data and base model folders, and a fingerprint of
    the train and dev utterances (texts and labels)."""
    utterances = json.dumps([train.inputs, train.labels, dev.inputs, dev.labels])
    return {
        **recorded_settings(config),
        "device": str(device),
        "data": str(Path(config.data).resolve()),
        "model": str(Path(base_dir).resolve()),
        "utterances": hashlib.sha256(utterances.encode()).hexdigest(),
    }


class Checkpoint:
    """Saves the state of one run (identified by `identity`) to `path`, atomically,
    after every `every` optimizer steps (0: never mid-epoch) and after each epoch; owns
    the run's start time and clock, which a resumed run carries on."""

    def __init__(
        self, path: Path, identity: dict[str, Any], every: int, started: datetime, clock: float
    ) -> None:
        self.path, self.identity, self.every = Path(path), identity, every
        self.started, self.clock = started, clock  # clock: time.perf_counter() at the start

    def after_step(self, trainer: Trainer, outcome: FitOutcome, position: Position) -> None:
        if self.every and trainer.step % self.every == 0:
            self.save(trainer, outcome, position)

    def save(self, trainer: Trainer, outcome: FitOutcome, position: Position) -> None:
        """Replace the state file with the run's state at `position` (when that fails, the
        previous one is kept and :class:`~corect.common.files.WriteError` names the file)."""
        state = {
            "format": FORMAT,
            "identity": self.identity,
            "started": self.started.isoformat(),
            "elapsed": time.perf_counter() - self.clock,
            "step": trainer.step,
            "position": vars(position),
            "weights": trainer.snapshot(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": rng_states(trainer.device),
            "outcome": vars(outcome),  # (not asdict: that would deep-copy the weights)
        }
        with atomic_target(self.path) as tmp:  # a failed write: WriteError naming the file
            try:
                torch.save(state, tmp)
            except RuntimeError as err:  # how torch's writer reports one (e.g. a full disk)
                raise OSError(errno.EIO, f"torch.save failed: {err}") from err

    def restore(
        self, state: dict[str, Any], trainer: Trainer, generator: torch.Generator
    ) -> tuple[FitOutcome, Position]:
        """Put the saved `state` (checked against this run) back into `trainer`, the
        RNGs and the batch-order `generator`; the outcome and position to go on from."""
        check_identity(state, self.identity, self.path)
        weights = state["weights"]
        if weights["encoder"]:
            trainer.encoder.load_state_dict(weights["encoder"], strict=False)
        trainer.head.load_state_dict(weights["head"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        trainer.step = state["step"]
        set_rng_states(state["rng"])
        position = Position(**state["position"])
        generator.set_state(position.order)
        self.started = datetime.fromisoformat(state["started"])
        self.clock -= state["elapsed"]
        if trainer.config.progress:
            print(
                f"resuming from {self.path}: epoch {position.epoch}, step {trainer.step} "
                f"of {trainer.total_steps}",
                file=sys.stderr,
            )
        return FitOutcome(**state["outcome"]), position

    def remove(self) -> None:
        """Drop the state (the model directory is complete)."""
        self.path.unlink(missing_ok=True)


def load_state(path: Path) -> dict[str, Any]:
    """The state saved at `path`; a missing or unreadable one is a :class:`FinetuneError`
    naming it."""
    if not path.is_file():
        raise FinetuneError(
            f"--resume: no saved state {path} (the run stopped before its first save, or "
            "it finished and wrote its model); run without --resume to start"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not its own
        raise FinetuneError(
            f"{path}: not a readable fine-tuning state ({err}); remove it and run without --resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FinetuneError(f"{path}: not a fine-tuning state of format {FORMAT}")
    return state


def check_identity(state: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    """Refuse to resume a state saved with other settings, naming them."""
    saved = state["identity"]
    differ = [k for k in identity if saved.get(k) != identity[k]]
    if not differ:
        return
    changes = "; ".join(
        "the train/dev utterances of --data changed"
        if key == "utterances"
        else f"--{key.replace('_', '-')} {saved.get(key)!r} (now {identity[key]!r})"
        for key in differ
    )
    raise FinetuneError(
        f"--resume: {path} was saved by a run with other settings: {changes}. Resume with "
        "the options it was started with, or run without --resume to start over"
    )


def finished_record(out: Path, config: FinetuneConfig, base_dir: Path) -> dict[str, Any] | None:
    """The record of the model directory `out` when a run with these settings, data and
    base model finished it (and left no state), else None: ``--resume`` has nothing to do."""
    if state_path(out).exists() or not (out / RECORD_FILE).is_file():
        return None
    record = read_json(out / RECORD_FILE, FinetuneError)
    same = (
        isinstance(record, dict)
        and record.get("settings") == recorded_settings(config)
        and record.get("dataset", {}).get("path") == str(config.data)
        and record.get("base_model") == str(base_dir)
    )
    return record if same else None


def rng_states(device: torch.device) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global random generators (CUDA's when
    the run is on CUDA), as plain values and tensors."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` read."""
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
