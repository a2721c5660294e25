"""The full training state of a run, written after every epoch, so that a killed run
continues where it stopped (``python -m corect.train --resume RUN_DIR``).

``RUN_DIR/training_state.pt`` (:data:`~corect.engine.checkpoints.TRAINING_STATE`) is
written atomically once an epoch is scored (and its best checkpoint, if any, saved):

- ``model``, ``optimizer``, ``scheduler``, ``scaler``: the state dicts of the loop;
- ``objective``: the loss module's state dict (:mod:`corect.engine.objectives`: learned
  or running prototypes, the distillation projection; the cross-entropy's class weights);
- ``progress``: the last finished ``epoch``, ``best_f1`` and ``best_epoch`` (the best-dev
  record, which with ``epoch`` is the early-stopping position) and ``epoch_times``;
- ``rng``: Python's, NumPy's and torch's global random states (CUDA's too once CUDA is in
  use) and the state of the generator that orders the batches and draws the dropouts;
- ``tensorboard_step``: the last step whose events are on disk (the epoch);
- ``config`` (the run's, as a dict) and ``device``.

Plain values and tensors only: it loads with ``torch.load(weights_only=True)``. Restoring
all of it makes the rest of the run the uninterrupted run's, bit for bit on CPU. The file
is removed once the run completes (it is about three times the checkpoint's size).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from corect.common.errors import InputError
from corect.common.files import recover
from corect.config import Config, TrainConfig
from corect.data.dataset import Dataset
from corect.engine.checkpoints import (
    TRAINING_STATE,
    check_run_data,
    cpu_state_dict,
    live_trainer,
    load_checkpoint,
    run_status,
    save_atomic,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("corect")
STATE_FORMAT = 1
# Config keys a resumed run may change: more epochs extend the run; progress bars are display.
RESUMABLE_KEYS = ("train.epochs", "train.progress")


class ResumeError(InputError):
    """A run cannot be resumed (no state, another config, being trained elsewhere)."""


@dataclass
class Progress:
    """Where a run stands after its last finished epoch."""

    epoch: int = 0
    best_f1: float = -1.0  # dev weighted F1 of the best epoch
    best_epoch: int = 0
    epoch_times: list[float] = field(default_factory=list)  # training seconds per epoch

    def record(self, epoch: int, seconds: float, dev_f1: float) -> bool:
        """Count `epoch` as finished; whether its dev weighted F1 is a new best."""
        self.epoch = epoch
        self.epoch_times.append(seconds)
        improved = dev_f1 > self.best_f1
        if improved:
            self.best_f1, self.best_epoch = dev_f1, epoch
        return improved

    def stopped_early(self, patience: int) -> bool:
        """Whether `patience` (> 0) epochs have passed without a dev gain."""
        return patience > 0 and self.epoch - self.best_epoch >= patience

    def finished(self, cfg: TrainConfig) -> bool:
        """All ``cfg.epochs`` done, or stopped early."""
        return self.epoch >= cfg.epochs or self.stopped_early(cfg.early_stopping)


@dataclass
class Loop:
    """What the training loop carries from one epoch to the next, besides :class:`Progress`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # batch order, modality and utterance dropout
    objective: nn.Module | None = None  # the loss (its prototypes, projection)


def save_training_state(
    run_dir: Path, config: Config, progress: Progress, loop: Loop, writer: SummaryWriter
) -> None:
    """Write ``run_dir/training_state.pt`` atomically (see the module docstring), after
    flushing TensorBoard's events so that those on disk reach the state's step. Reads
    the random states without drawing from them."""
    writer.flush()
    objective = loop.objective
    state = {
        "format": STATE_FORMAT,
        "config": config.to_dict(),
        "progress": asdict(progress),
        "model": cpu_state_dict(loop.model.state_dict()),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else None,
        "scaler": loop.scaler.state_dict(),
        "objective": cpu_state_dict(objective.state_dict()) if objective is not None else {},
        "rng": random_states(loop.generator),
        "tensorboard_step": progress.epoch,
        "device": str(next(loop.model.parameters()).device),
    }
    save_atomic(state, run_dir / TRAINING_STATE)


def restore_training_state(state: dict[str, Any], loop: Loop, run_dir: Path) -> Progress:
    """Load a state written by :func:`save_training_state` into `loop` (random states
    included); the run's :class:`Progress`."""
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    if loop.scheduler is not None:
        loop.scheduler.load_state_dict(state["scheduler"])
    loop.scaler.load_state_dict(state["scaler"])
    if loop.objective is not None and "objective" in state:  # states before issue 22 lack it
        loop.objective.load_state_dict(state["objective"])
    set_random_states(state["rng"], loop.generator)
    progress = Progress(**state["progress"])
    device = str(next(loop.model.parameters()).device)
    if state["device"] != device:
        log.warning(
            "warning: %s was trained on %s and continues on %s: its figures will not be "
            "exactly those of an uninterrupted run",
            run_dir,
            state["device"],
            device,
        )
    log.info(
        "resuming %s after epoch %d (best dev wF1 %.4f at epoch %d)",
        run_dir,
        progress.epoch,
        progress.best_f1,
        progress.best_epoch,
    )
    return progress


def random_states(generator: torch.Generator) -> dict[str, Any]:
    """Python's, NumPy's, torch's (and CUDA's, once in use) global random states and
    `generator`'s, as plain values and tensors."""
    version, internal, gauss_next = random.getstate()
    key, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any], generator: torch.Generator) -> None:
    """Put back what :func:`random_states` read."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["key"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def already_completed(run_dir: Path) -> bool:
    """Whether `run_dir` completed (logged: there is nothing to resume; a completed run
    is never extended)."""
    if run_status(run_dir) != "completed":
        return False
    log.info("%s: the run already completed; nothing to resume", run_dir)
    return True


def resume_point(run_dir: Path, config: Config) -> dict[str, Any]:
    """The training state to continue `run_dir` with `config`: :class:`ResumeError`
    when the run has none, is being trained by a live process of this machine, or was
    trained with another config (only :data:`RESUMABLE_KEYS` may change, and train.epochs
    not below the epochs done). Nothing is written."""
    if not run_dir.is_dir():
        raise ResumeError(f"{run_dir}: no such run directory; nothing to resume")
    path = run_dir / TRAINING_STATE
    recover(path)  # temporary files of a killed write
    if not path.is_file():
        raise ResumeError(
            f"{run_dir}: cannot be resumed: it has no {TRAINING_STATE} (the run stopped "
            "before its first epoch finished, or it was trained by an older corect); "
            "train it again without --resume"
        )
    check_not_training(run_dir)
    state = load_training_state(path)
    check_same_config(run_dir, state["config"], config)
    done = state["progress"]["epoch"]
    if config.train.epochs < done:
        raise ResumeError(
            f"train.epochs={config.train.epochs}: {run_dir} has already trained {done} "
            f"epochs; give train.epochs={done} or more"
        )
    return state


def check_resumed_data(run_dir: Path, dataset: Dataset) -> None:
    """Refuse to continue `run_dir` on data other than its checkpoint's."""
    check_run_data(run_dir, load_checkpoint(run_dir), dataset)


def load_training_state(path: Path) -> dict[str, Any]:
    """A training state file (``weights_only``); :class:`ResumeError` naming it when it
    is unreadable or not ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:120]
        raise ResumeError(
            f"{path}: cannot be resumed from: not a readable training state "
            f"({type(err).__name__}: {first})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path}: not a training state written by this corect")
    return state


def check_not_training(run_dir: Path) -> None:
    """:class:`ResumeError` when a live process of this machine is training `run_dir`."""
    pid = live_trainer(run_dir)
    if pid is not None:
        raise ResumeError(
            f"{run_dir}: is being trained by process {pid} of this machine; wait for "
            "it to end, or stop it, before resuming"
        )


def check_same_config(run_dir: Path, trained: dict[str, Any], config: Config) -> None:
    """:class:`ResumeError` naming every key (other than :data:`RESUMABLE_KEYS`) whose
    value in `config` is not the one the run was trained with."""
    before, now = dict(_flat(trained)), dict(_flat(config.to_dict()))
    keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    differing = [k for k in keys if k not in RESUMABLE_KEYS]
    if differing:
        listed = ", ".join(
            f"{k} (the run's {before.get(k)!r}, given {now.get(k)!r})" for k in differing
        )
        raise ResumeError(
            f"{run_dir}: cannot be resumed with another config: {listed}; only "
            f"{' and '.join(RESUMABLE_KEYS)} may change when resuming (start a new run instead)"
        )


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
