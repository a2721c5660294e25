"""Scoring: a model's predictions on a split, and a trained run scored again.

:func:`evaluate_split` is the one scorer: the training loop uses it for dev every epoch
and for the best checkpoint at the end, and :func:`evaluate_run` (``corect.evaluate``)
uses it on the same checkpoint, so the two agree exactly. :func:`score_run` adds the
weighted F1 by position in the dialogue (``corect.compare_modes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from corect.common import plots
from corect.common.files import write_json_atomic
from corect.common.metrics import classification_metrics, weighted_f1_by_position
from corect.common.runtime import DEFAULT_DEVICE, autocast, select_device
from corect.config import Config
from corect.data.batching import iterate_batches
from corect.data.dataset import Dataset, SplitData
from corect.data.format import DatasetError
from corect.engine.checkpoints import check_run_data, load_data, load_run


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


class LoadedRun(NamedTuple):
    """A trained run ready to score: its best model (eval mode) and the data it was
    checked against."""

    config: Config
    model: nn.Module
    checkpoint: dict[str, Any]
    dataset: Dataset
    device: torch.device


def load_for_scoring(
    run_dir: str | Path, split: str, device: str, dataset: Dataset | None = None
) -> LoadedRun:
    """Reload a run's best checkpoint and its dataset (`dataset` when given), refusing
    data the run was not trained on and a split the dataset does not have."""
    torch_device = select_device(device)
    config, model, checkpoint = load_run(run_dir, str(torch_device))
    dataset = dataset or load_data(config)
    check_run_data(run_dir, checkpoint, dataset)  # before anything is written
    if split not in dataset.splits:
        raise DatasetError(f"split {split!r} not in dataset {dataset.path}")
    return LoadedRun(config, model, checkpoint, dataset, torch_device)


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    device: str = DEFAULT_DEVICE,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Metrics of a run's best checkpoint on `split` (also written to eval-<split>.json),
    and its confusion matrix drawn to confusion-<split>.png."""
    run = load_for_scoring(run_dir, split, device, dataset)
    config, labels = run.config, run.checkpoint["labels"]
    metrics, loss = evaluate_split(
        run.model,
        run.dataset.splits[split],
        labels,
        config.train.batch_size,
        run.device,
        config.train.amp,
    )
    metrics["loss"] = loss
    write_json_atomic(Path(run_dir) / f"eval-{split}.json", metrics)
    title = plots.run_title(run.dataset.name, config.model.name, config.model.causal, split)
    plots.save_confusion(run_dir, split, metrics["confusion"], labels, title)
    return metrics


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
    run = load_for_scoring(run_dir, split, device, dataset)
    config, data = run.config, run.dataset.splits[split]
    logits = predict(run.model, data, config.train.batch_size, run.device, config.train.amp)
    y_true, y_pred = data.labels.numpy(), logits.argmax(1).numpy()
    metrics = classification_metrics(y_true, y_pred, run.checkpoint["labels"])
    metrics["by_position"] = weighted_f1_by_position(y_true, y_pred, dialogue_positions(data))
    return config, run.dataset, metrics
