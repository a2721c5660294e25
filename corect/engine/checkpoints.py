"""A run on disk: its folder, what it is built from, its checkpoint and its status.

- :func:`run_directory`: a new
  ``runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>``;
- :func:`load_data` and :func:`model_for`: the dataset of a config and a new model for it
  (training builds these; :func:`load_run` rebuilds the model from a checkpoint);
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_run`: ``RUN_DIR/checkpoint.pt``
  holds plain types only (state dict, config, label names, dims, the dataset's
  fingerprint, ...), so it loads with ``torch.load(weights_only=True)``;
  :func:`check_run_data` refuses a dataset that is not the one the run was trained on;
- :func:`write_run_status`, :func:`run_status`, :func:`abandon_run`: ``RUN_DIR/run.json``
  says whether the run is running, completed, failed or stopped;
- :data:`TRAINING_STATE`: the full state of the last finished epoch, which
  :func:`can_resume` tells about (written and read by :mod:`corect.engine.state`).
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from corect.common.errors import InputError
from corect.common.files import (
    HOST,
    WriteError,
    atomic_target,
    output_directory,
    process_alive,
    read_json,
    recover,
    write_json_atomic,
)
from corect.common.runtime import timestamp
from corect.config import Config, ConfigError, config_from_dict
from corect.data.dataset import Dataset
from corect.data.format import DatasetError, load_dataset
from corect.data.synthetic import ensure_synthetic_dataset
from corect.models.build import build_model

CHECKPOINT = "checkpoint.pt"
RUN_STATUS = "run.json"
TRAINING_STATE = "training_state.pt"
CHECKPOINT_KEYS = ("state_dict", "config", "labels", "dims", "num_speakers")
log = logging.getLogger("corect")


class CheckpointError(InputError):
    """A checkpoint file is unreadable, refused or inconsistent."""


def run_directory(config: Config, dataset: Dataset) -> Path:
    """A new ``runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>``
    (``train.run_name`` when set; ``-1``, ``-2``, ... appended when the name is taken)."""
    model = config.model.name + ("-causal" if config.model.causal else "")
    group = (
        Path(config.train.runs_dir)
        / dataset.name
        / f"{config.data.modalities}--{dataset.task}--{model}"
    )
    name = config.train.run_name or f"{timestamp()}-seed{config.train.seed}"
    clear_dead_run(group / name)
    return output_directory(group, name)


def clear_dead_run(run_dir: Path) -> bool:
    """Remove `run_dir` when it is a run whose process died (a SIGKILL, a power cut) before
    its first training state was written: nothing to resume (the policy of
    :func:`corect.experiments.reuse.train_or_reuse` too), only what the dead process left
    (its log, perhaps a first checkpoint, a half-written temporary). So a rerun under the
    same ``train.run_name`` takes the name back and leaves no debris. True if removed."""
    if not run_dir.is_dir() or (run_dir / TRAINING_STATE).exists():
        return False
    if not (run_dir / RUN_STATUS).exists():  # killed before run.json: only its config?
        for name in ("config.yaml", RUN_STATUS):
            recover(run_dir / name)  # the dead writer's temporaries
        if {entry.name for entry in run_dir.iterdir()} - {"config.yaml"}:
            return False
    elif not run_status(run_dir).startswith("interrupted"):
        return False
    log.info("removing %s: its process died before its first epoch ended", run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def load_data(config: Config) -> Dataset:
    """The dataset named by ``config.data`` (the synthetic default when no path is set),
    restricted to ``config.data.modalities``."""
    path = config.data.path or ensure_synthetic_dataset(
        config.data.synthetic, config.data.cache_dir
    )
    dataset = load_dataset(path, config.data.modalities)
    for split in ("train", "dev", "test"):
        if split not in dataset.splits or dataset.splits[split].num_dialogues == 0:
            raise DatasetError(f"{path}: split {split!r} is missing or empty")
    return dataset


def model_for(config: Config, dataset: Dataset) -> nn.Module:
    """The configured model for `dataset`, its inputs standardised with train statistics."""
    num_speakers = config.model.num_speakers or dataset.max_parties
    statistics = dataset.splits["train"].feature_statistics()
    return build_model(config.model, dataset.dims, dataset.num_classes, num_speakers, statistics)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    config: Config,
    dataset: Dataset,
    epoch: int,
    modality_heads: nn.Module | None = None,
) -> None:
    """State dict + config + what the model was trained on (labels in order, dims, the
    dataset's fingerprint and text-feature record); plain types only, so it loads with
    ``torch.load(path, weights_only=True)``. Written atomically. `modality_heads`: the
    per-modality heads of in-model distillation, kept beside the model's weights (key
    ``modality_heads``) so the run's students are scored at the best epoch."""
    checkpoint = {
        "state_dict": cpu_state_dict(model.state_dict()),
        "config": config.to_dict(),
        "labels": list(dataset.labels),
        "dims": dict(dataset.dims),
        "num_speakers": config.model.num_speakers or dataset.max_parties,
        "dataset": dataset.name,
        "task": dataset.task,
        "fingerprint": dataset.fingerprint,
        "text_features": dataset.text_features or {},
        "epoch": epoch,
    }
    if modality_heads is not None:
        checkpoint["modality_heads"] = cpu_state_dict(modality_heads.state_dict())
    save_atomic(checkpoint, path)


def cpu_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's tensors detached and on the CPU, as checkpoints and training states
    save them."""
    return {k: v.detach().cpu() for k, v in state_dict.items()}


def save_atomic(data: dict[str, Any], path: Path) -> None:
    """``torch.save`` of `data` to `path`, atomically. Through a Python file, so that a
    full disk or a read-only folder is a :class:`~corect.common.files.WriteError` naming
    `path` (torch's own file writer reports neither), the old file staying as it was."""
    with atomic_target(path) as tmp, tmp.open("wb") as file:
        torch.save(data, file)


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint of a run (``weights_only``: no code is unpickled); a file that
    is not a readable checkpoint of ours raises :class:`CheckpointError` naming it."""
    path = Path(run_dir) / CHECKPOINT
    recover(path)  # temporary files of a killed save
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; is {run_dir} a corect run directory?")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:120]
        if "Weights only load failed" in first:
            raise CheckpointError(
                f"{path}: refused: not a checkpoint written by corect (damaged, or it holds "
                "Python objects other than tensors and plain values, which are never unpickled)"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {first}); is it "
            "truncated? Train the run again"
        ) from None
    missing = [
        k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint
    ]
    if missing:
        raise CheckpointError(f"{path}: not a corect checkpoint (no {', '.join(missing)})")
    return checkpoint


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Config, nn.Module, dict[str, Any]]:
    """The config, the model with the best weights (eval mode) and the raw checkpoint.
    Warns when the run did not complete (its checkpoint is the best epoch so far)."""
    checkpoint = load_checkpoint(run_dir, device)
    path = Path(run_dir) / CHECKPOINT
    try:
        config = config_from_dict(checkpoint["config"])
    except (ConfigError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: its config is invalid: {err}") from None
    labels, dims = checkpoint["labels"], checkpoint["dims"]
    if not isinstance(labels, list) or not isinstance(dims, dict):
        raise CheckpointError(f"{path}: fields 'labels' and 'dims' must be a list and a dict")
    try:
        model = build_model(config.model, dims, len(labels), checkpoint["num_speakers"])
        model.load_state_dict(checkpoint["state_dict"])
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:160]
        raise CheckpointError(f"{path}: its weights do not fit its config: {first}") from None
    status = run_status(run_dir)
    if status != "completed":
        log.warning(
            "warning: %s did not complete (%s); using its best checkpoint so far", run_dir, status
        )
    return config, model.to(device).eval(), checkpoint


def check_run_data(run_dir: str | Path, checkpoint: dict[str, Any], dataset: Dataset) -> None:
    """Refuse `dataset` (:class:`DatasetError`) unless it is the data the run was trained
    on: same labels in the same order, modalities and dims, and fingerprint. Checkpoints
    of older versions, without a fingerprint, are only warned about."""
    where = f"{dataset.path} is not the data {run_dir} was trained on"
    advice = "use the dataset the run was trained on, or train again"
    if list(checkpoint["labels"]) != list(dataset.labels):
        raise DatasetError(
            f"{where}: its labels are {', '.join(dataset.labels)}, the run's are "
            f"{', '.join(checkpoint['labels'])} (order matters; was it converted again?); " + advice
        )
    if dict(checkpoint["dims"]) != dataset.dims:
        raise DatasetError(
            f"{where}: its modalities and dims are {dataset.dims}, the run's are "
            f"{dict(checkpoint['dims'])}; " + advice
        )
    fingerprint = checkpoint.get("fingerprint")
    if fingerprint is None:
        log.warning(
            "warning: %s has no dataset fingerprint (saved by an older corect): cannot check "
            "that %s is the data it was trained on",
            run_dir,
            dataset.path,
        )
    elif fingerprint != dataset.fingerprint:
        raise DatasetError(
            f"{where}: its contents differ (fingerprint {dataset.fingerprint}, the run's "
            f"{fingerprint}); was it converted again or changed? " + advice
        )


def write_run_status(run_dir: Path, status: str, **info: Any) -> None:
    """Write ``RUN_DIR/run.json``: running, completed or failed (with ``error``)."""
    record = {"status": status, "host": HOST, "pid": os.getpid()}
    record["time"] = datetime.now().isoformat(timespec="seconds")
    write_json_atomic(run_dir / RUN_STATUS, {**record, **info})


def run_status(run_dir: str | Path) -> str:
    """``completed``, ``running``, ``interrupted`` (running, but its process is gone),
    ``failed: <error>``, ``stopped: <why>`` (Ctrl-C, a scheduler), or for runs older than
    run.json ``completed`` when metrics.json exists and ``incomplete`` otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_STATUS
    if not path.exists():
        done = (run_dir / "metrics.json").is_file()
        return "completed" if done else "incomplete: no metrics.json"
    try:
        info = read_json(path)
    except InputError:
        info = None
    if not isinstance(info, dict) or "status" not in info:
        return f"unknown: {path} is unreadable"
    status, pid = str(info["status"]), info.get("pid")
    if status == "running" and info.get("host") == HOST and isinstance(pid, int):
        if not process_alive(pid):
            return "interrupted: its process ended before the run finished"
    if status in ("failed", "stopped"):
        return f"{status}: {info.get('error', '?')}"
    return status


def live_trainer(run_dir: str | Path) -> int | None:
    """The process id of a live process of this machine, other than this one, that
    ``run.json`` says is training `run_dir`; None when there is none (or no readable
    record)."""
    try:
        info = read_json(Path(run_dir) / RUN_STATUS)
    except InputError:
        return None
    if not isinstance(info, dict) or info.get("status") != "running":
        return None
    pid = info.get("pid")
    if info.get("host") != HOST or not isinstance(pid, int) or pid == os.getpid():
        return None
    return pid if process_alive(pid) else None


def can_resume(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a training state to continue from (``corect.train
    --resume``) and did not complete."""
    return (Path(run_dir) / TRAINING_STATE).is_file() and run_status(run_dir) != "completed"


def abandon_run(run_dir: Path, err: BaseException) -> None:
    """After a failure: remove a run folder that holds no checkpoint yet (nothing worth
    keeping), else mark it failed in run.json (stopped, when it was stopped from outside:
    Ctrl-C, or a scheduler such as Ray Tune's ASHA); an input error's message says which."""
    stopped = isinstance(err, (KeyboardInterrupt, SystemExit))  # Ctrl-C, a scheduler (ASHA)
    if isinstance(err, KeyboardInterrupt):
        reason = "interrupted"
    elif isinstance(err, SystemExit):
        reason = f"stopped from outside (exit {err.code})"
    else:
        reason = str(err) or repr(err)
    if (run_dir / CHECKPOINT).is_file() or (run_dir / TRAINING_STATE).is_file():
        status = "stopped" if stopped else "failed"
        note = f"the run is marked {status} in {run_dir / RUN_STATUS}"
        try:
            write_run_status(run_dir, status, error=reason)
        except InputError:  # a full disk or read-only folder: keep the first error
            note = f"its {RUN_STATUS} could not be updated either"
        outside = stopped or isinstance(err, WriteError) or not isinstance(err, InputError)
        if outside and (run_dir / TRAINING_STATE).is_file():  # not for a diverged run
            note += f"; continue it with python -m corect.train --resume {run_dir}"
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in (run_dir.parent, run_dir.parent.parent):  # group folders left empty
            try:
                parent.rmdir()
            except OSError:
                break
        note = f"its folder {run_dir} was removed (no checkpoint yet)"
    log.info("run failed: %s; %s", reason, note)
    if isinstance(err, InputError) and err.args:
        err.args = (f"{err.args[0]}; {note}", *err.args[1:])
