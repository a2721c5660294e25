"""Runs: the library layer every command stands on.

Choosing the device, loading a run's data, building the model for a dataset, mixed
precision, one training step, saving and loading a checkpoint, predicting and scoring a
split. The commands (``train``, ``evaluate``, ``predict``, ``stream``, ``speed``,
``benchmark``, ``compare_modes``) import from here and never from each other.

A checkpoint (``RUN_DIR/checkpoint.pt``) holds plain types only (state dict, config,
label names, dims, the dataset's fingerprint, ...), so it loads with
``torch.load(weights_only=True)``; :func:`check_run_data` refuses a dataset that is not
the one the run was trained on. ``RUN_DIR/run.json`` says whether the run completed
(:func:`run_status`).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from corect.common.errors import InputError
from corect.common.files import (
    HOST,
    atomic_target,
    process_alive,
    read_json,
    recover,
    write_json_atomic,
)
from corect.common.metrics import classification_metrics, weighted_f1_by_position
from corect.common.runtime import DEFAULT_DEVICE, autocast, select_device
from corect.config import Config, ConfigError, config_from_dict
from corect.data.batching import Batch, drop_modalities, drop_utterances, iterate_batches
from corect.data.format import Dataset, DatasetError, SplitData, load_dataset
from corect.data.synthetic import ensure_synthetic_dataset
from corect.models.build import build_model

CHECKPOINT = "checkpoint.pt"
RUN_STATUS = "run.json"
CHECKPOINT_KEYS = ("state_dict", "config", "labels", "dims", "num_speakers")
log = logging.getLogger("corect")


class CheckpointError(InputError):
    """A checkpoint file is unreadable, refused or inconsistent."""


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


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW as ``config.train`` says, with the fused (one kernel for all
    parameters) implementation: same update, several times faster on CPU."""
    cfg = config.train
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = list(model.parameters())
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return optimizer_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def grad_scaler(config: Config, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast on CUDA; a no-op otherwise."""
    use_amp = config.train.amp and device.type == "cuda"
    return torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())


def train_step(
    model: nn.Module,
    batch: Batch,
    config: Config,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: nn.Module,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step on `batch`: modality and utterance dropout, forward under
    autocast, loss, backward (scaled), gradient clipping, optimizer step. Returns (loss,
    logits, labels) of the batch as it was fed (on `device`)."""
    cfg = config.train
    batch = drop_modalities(batch, cfg.modality_dropout, generator)
    batch = drop_utterances(batch, cfg.utterance_dropout, generator).to(device)
    with autocast(device, cfg.amp):
        logits = model(batch)
        loss = loss_fn(logits.float(), batch.labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, logits, batch.labels


@torch.no_grad()
def predict(
    model: nn.Module, split: SplitData, batch_size: int, device: torch.device, amp: bool = True
) -> torch.Tensor:
    """Logits [N, classes] for every utterance of `split`, in split order (eval mode)."""
    model.eval()
    outputs = []
    for batch in iterate_batches(split, batch_size):
        with autocast(device, amp):
            outputs.append(model(batch.to(device)).float().cpu())
    return torch.cat(outputs)


def evaluate_split(
    model: nn.Module,
    split: SplitData,
    labels: list[str],
    batch_size: int,
    device: torch.device,
    amp: bool = True,
) -> tuple[dict[str, Any], float]:
    """Metrics and mean cross-entropy of `model` on `split`."""
    logits = predict(model, split, batch_size, device, amp)
    keep = split.labels >= 0
    loss = nn.functional.cross_entropy(logits[keep], split.labels[keep]).item()
    metrics = classification_metrics(split.labels.numpy(), logits.argmax(1).numpy(), labels)
    return metrics, loss


def save_checkpoint(
    path: Path, model: nn.Module, config: Config, dataset: Dataset, epoch: int
) -> None:
    """State dict + config + what the model was trained on (labels in order, dims, the
    dataset's fingerprint and text-feature record); plain types only, so it loads with
    ``torch.load(path, weights_only=True)``. Written atomically."""
    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
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
    with atomic_target(path) as tmp:
        torch.save(checkpoint, tmp)


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


def dialogue_positions(split: SplitData) -> np.ndarray:
    """0-based position of every utterance of `split` in its dialogue."""
    starts = torch.repeat_interleave(split.offsets[:-1], split.lengths)
    return (torch.arange(split.num_utterances) - starts).numpy()


def score_run(
    run_dir: str | Path,
    dataset: Dataset | None = None,
    split: str = "test",
    device: str = DEFAULT_DEVICE,
) -> tuple[Config, Dataset, dict[str, Any]]:
    """Reload a run's best checkpoint and score it on `split`: the metrics of
    :func:`corect.common.metrics.classification_metrics` plus ``by_position``."""
    torch_device = select_device(device)
    config, model, checkpoint = load_run(run_dir, str(torch_device))
    dataset = dataset or load_data(config)
    check_run_data(run_dir, checkpoint, dataset)
    if split not in dataset.splits:
        raise DatasetError(f"split {split!r} not in dataset {dataset.path}")
    data = dataset.splits[split]
    logits = predict(model, data, config.train.batch_size, torch_device, config.train.amp)
    y_true, y_pred = data.labels.numpy(), logits.argmax(1).numpy()
    metrics = classification_metrics(y_true, y_pred, checkpoint["labels"])
    metrics["by_position"] = weighted_f1_by_position(y_true, y_pred, dialogue_positions(data))
    return config, dataset, metrics
