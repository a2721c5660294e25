"""The training loop and its step (behind ``python -m corect.train``, ``benchmark``,
``compare_modes`` and ``tune``).

Reads top to bottom: :func:`train` loads the data, builds the model and makes the run
directory; :func:`fit` runs the epochs: :func:`train_epoch` (one :func:`train_step` per
batch), :func:`score_dev`, the scheduler, the best checkpoint kept by dev weighted F1,
:func:`log_epoch`, the training state, early stopping; then :func:`finish_run` reloads
the best checkpoint, scores dev and test, and writes the results. A non-finite loss stops
the run with :class:`DivergedError`; a failed run's folder is marked failed, or removed
when it holds no checkpoint yet (:func:`corect.engine.checkpoints.abandon_run`). A run
stopped for any reason continues from its last finished epoch with ``train(config,
resume=RUN_DIR)`` (:mod:`corect.engine.state`)::

    runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>/
        config.yaml      the resolved config
        checkpoint.pt    best state dict + config + what it was trained on (labels,
                         dims, dataset fingerprint); torch.load(weights_only=True)
        training_state.pt  everything needed to continue after the last finished epoch
                         (corect.engine.state); removed once the run completes
        metrics.json     dev and test metrics, best epoch, time per epoch
        run.json         status: running, completed, failed or stopped (with the error)
        confusion-dev.png, confusion-test.png   labelled confusion matrices (corect.common.plots)
        events.*         TensorBoard (tensorboard --logdir runs)

A hyperparameter search (:mod:`corect.tune`) passes ``on_epoch``, called with the
epoch's dev figures, and ``test=False``: the test split is then never scored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from corect.common.errors import InputError
from corect.common.files import write_json_atomic
from corect.common.metrics import SCORES, classification_metrics
from corect.common.runtime import (
    autocast,
    grad_scaler,
    seed_everything,
    select_device,
    setup_logging,
)
from corect.config import Config, save_config
from corect.data.batching import (
    Batch,
    drop_modalities,
    drop_utterances,
    iterate_batches,
    num_batches,
)
from corect.data.dataset import Dataset
from corect.engine.checkpoints import (
    CHECKPOINT,
    TRAINING_STATE,
    abandon_run,
    load_checkpoint,
    load_data,
    model_for,
    run_directory,
    save_checkpoint,
    write_run_status,
)
from corect.engine.distillation import score_modality_heads
from corect.engine.losses import class_weights
from corect.engine.objectives import auxiliary_terms_on, build_objective
from corect.engine.reports import log_epoch, log_results, log_start
from corect.engine.scoring import evaluate_split
from corect.engine.state import (
    Loop,
    Progress,
    already_completed,
    check_resumed_data,
    restore_training_state,
    resume_point,
    save_training_state,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("corect")
# Called after every epoch with its figures: epoch, train_loss, dev_loss, dev_accuracy,
# dev_weighted_f1, dev_macro_f1, best_dev_weighted_f1, best_epoch, lr.
EpochCallback = Callable[[dict[str, float]], None]


class DivergedError(InputError):
    """Training diverged (a non-finite loss); the run is not reported."""


def train(
    config: Config,
    *,
    on_epoch: EpochCallback | None = None,
    test: bool = True,
    resume: str | Path | None = None,
) -> Path:
    """Train one model as described by `config`; return its run directory. `on_epoch`
    gets every epoch's figures once dev is scored; with `test` False the test split is
    never scored (metrics.json then holds dev only). With `resume` (a run directory) the
    run continues from its last finished epoch, as if it had never stopped; `config` must
    be the run's (:func:`~corect.engine.state.resume_point`); a completed run is returned
    as it is."""
    from torch.utils.tensorboard import SummaryWriter

    setup_logging()
    if resume is not None and already_completed(Path(resume)):
        return Path(resume)
    state = None if resume is None else resume_point(Path(resume), config)
    generator = seed_everything(config.train.seed)
    device = select_device(config.train.device)
    dataset = load_data(config)
    model = model_for(config, dataset).to(device)
    if resume is None:
        run_dir = run_directory(config, dataset)
    else:
        run_dir = Path(resume)
        check_resumed_data(run_dir, dataset)
    save_config(config, run_dir / "config.yaml")
    write_run_status(run_dir, "running")
    # Resumed: TensorBoard hides the events a killed run wrote after the state's step.
    purge_step = None if state is None else state["tensorboard_step"] + 1
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
    try:
        fit(config, dataset, model, device, generator, run_dir, writer, on_epoch, test, state)
    except BaseException as err:
        with contextlib.suppress(Exception):  # a full disk may fail its flush too
            writer.close()
        abandon_run(run_dir, err)
        raise
    writer.close()
    write_run_status(run_dir, "completed")
    (run_dir / TRAINING_STATE).unlink(missing_ok=True)
    return run_dir


def fit(
    config: Config,
    dataset: Dataset,
    model: nn.Module,
    device: torch.device,
    generator: torch.Generator,
    run_dir: Path,
    writer: SummaryWriter,
    on_epoch: EpochCallback | None = None,
    test: bool = True,
    resumed: dict[str, Any] | None = None,
) -> None:
    """The epochs of one run, then the best checkpoint scored on dev and test (unless
    `test` is False; `on_epoch` gets each epoch's dev figures); writes checkpoint.pt,
    training_state.pt (every epoch), metrics.json, the figures and TensorBoard logs into
    `run_dir`. A `resumed` training state continues after its epoch."""
    cfg = config.train
    log_start(config, dataset, model, device, run_dir)
    loss_fn = build_loss(config, dataset, device, model)
    optimizer = build_optimizer(config, model, loss_fn.parameters())
    scheduler = build_scheduler(config, optimizer)
    scaler = grad_scaler(device, config.train.amp)
    loop = Loop(model, optimizer, scheduler, scaler, generator, loss_fn)
    heads = getattr(loss_fn, "modality_heads", None)  # in-model distillation's students
    progress = Progress() if resumed is None else restore_training_state(resumed, loop, run_dir)

    while not progress.finished(cfg):
        epoch = progress.epoch + 1
        train_loss, train_metrics, seconds = train_epoch(
            model, dataset, config, optimizer, scaler, loss_fn, generator, device, epoch
        )
        dev_metrics, dev_loss = score_dev(model, dataset, config, device, epoch)
        if scheduler is not None:
            scheduler.step(dev_loss)
        lr = optimizer.param_groups[0]["lr"]
        improved = progress.record(epoch, seconds, dev_metrics["weighted_f1"])
        if improved:
            save_checkpoint(run_dir / CHECKPOINT, model, config, dataset, epoch, heads)
        record = EpochRecord(epoch, seconds, train_loss, train_metrics, dev_loss, dev_metrics, lr)
        log_epoch(writer, record, improved)
        save_training_state(run_dir, config, progress, loop, writer)
        if on_epoch is not None:
            on_epoch(record.figures(progress.best_f1, progress.best_epoch))
    if progress.stopped_early(cfg.early_stopping):
        log.info("early stop: no dev weighted-F1 gain for %d epochs", cfg.early_stopping)

    finish_run(config, dataset, model, device, run_dir, writer, progress, test, heads)


@dataclass
class EpochRecord:
    """One epoch's figures, as the log line, TensorBoard and ``on_epoch`` show them."""

    epoch: int
    seconds: float  # training only, scoring excluded
    train_loss: float
    train: dict[str, Any]  # classification_metrics of the train predictions
    dev_loss: float
    dev: dict[str, Any]
    lr: float  # after the scheduler's step

    def figures(self, best_f1: float, best_epoch: int) -> dict[str, float]:
        """What ``on_epoch`` gets (see :data:`EpochCallback`)."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "dev_loss": self.dev_loss,
            **{f"dev_{k}": self.dev[k] for k in SCORES},
            "best_dev_weighted_f1": best_f1,
            "best_epoch": best_epoch,
            "lr": self.lr,
        }


def train_epoch(
    model: nn.Module,
    dataset: Dataset,
    config: Config,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: nn.Module,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
) -> tuple[float, dict[str, Any], float]:
    """One pass over the train split, batches in the order `generator` draws: the mean
    loss per labelled utterance, the metrics of the predictions made on the way, and the
    seconds it took. Raises :class:`DivergedError` on a non-finite loss."""
    cfg, split = config.train, dataset.splits["train"]
    model.train()
    start = time.perf_counter()
    total_loss, total_count, predictions, targets = 0.0, 0, [], []
    batches = iterate_batches(
        split,
        cfg.batch_size,
        shuffle=True,
        generator=generator,
        bucket_by_length=cfg.bucket_by_length,
    )
    bar = tqdm(
        batches,
        total=num_batches(split, cfg.batch_size),
        desc=f"epoch {epoch}/{cfg.epochs}",
        leave=False,
        disable=not cfg.progress,
    )
    for number, batch in enumerate(bar, start=1):
        loss, logits, labels = train_step(
            model, batch, config, optimizer, scaler, loss_fn, generator, device
        )
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(
                f"training diverged: the loss is {value} at epoch {epoch}, batch {number} "
                f"(train.lr={cfg.lr:g}, train.grad_clip={cfg.grad_clip:g}); lower "
                "train.lr or set train.grad_clip"
            )
        count = int((labels >= 0).sum())
        total_loss += value * count
        total_count += count
        predictions.append(logits.argmax(1).cpu())
        targets.append(labels.cpu())
        bar.set_postfix(loss=f"{value:.3f}")
    seconds = time.perf_counter() - start
    metrics = classification_metrics(
        torch.cat(targets).numpy(), torch.cat(predictions).numpy(), dataset.labels
    )
    return total_loss / max(total_count, 1), metrics, seconds


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
    autocast, loss, backward (scaled), gradient clipping (of every parameter the optimizer
    steps, the objective's too), optimizer step. Returns (loss, logits, labels) of the
    batch as it was fed (on `device`)."""
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
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, logits, batch.labels


def score_dev(
    model: nn.Module, dataset: Dataset, config: Config, device: torch.device, epoch: int
) -> tuple[dict[str, Any], float]:
    """Metrics and loss on dev after `epoch`; a non-finite loss on a labelled dev split
    raises :class:`DivergedError`."""
    cfg, dev = config.train, dataset.splits["dev"]
    metrics, loss = evaluate_split(model, dev, dataset.labels, cfg.batch_size, device, cfg.amp)
    if not math.isfinite(loss) and bool((dev.labels >= 0).any()):
        raise DivergedError(
            f"training diverged: the dev loss is {loss} after epoch {epoch} "
            f"(train.lr={cfg.lr:g}); lower train.lr or set train.grad_clip"
        )
    return metrics, loss


def finish_run(
    config: Config,
    dataset: Dataset,
    model: nn.Module,
    device: torch.device,
    run_dir: Path,
    writer: SummaryWriter,
    progress: Progress,
    test: bool = True,
    modality_heads: nn.ModuleDict | None = None,
) -> None:
    """Reload the best checkpoint and score it on dev (and test) exactly as
    ``corect.evaluate`` does; write metrics.json, the confusion figures and TensorBoard's
    hyperparameter table. With in-model distillation's `modality_heads`, each modality's
    head alone is scored too (metrics.json ``modality_heads``)."""
    cfg, best_epoch, epoch_times = config.train, progress.best_epoch, progress.epoch_times
    checkpoint = load_checkpoint(run_dir, device)
    model.load_state_dict(checkpoint["state_dict"])
    scored: dict[str, dict[str, Any]] = {}
    for name in ("dev", "test") if test else ("dev",):
        split = dataset.splits[name]
        metrics, loss = evaluate_split(
            model, split, dataset.labels, cfg.batch_size, device, cfg.amp
        )
        scored[name] = {**metrics, "loss": loss}
    results = {
        "dataset": dataset.name,
        "task": dataset.task,
        "modalities": config.data.modalities,
        "model": config.model.name,
        "causal": config.model.causal,
        "seed": cfg.seed,
        "labels": dataset.labels,
        "best_epoch": best_epoch,
        "epochs_run": len(epoch_times),
        "seconds_per_epoch": float(np.mean(epoch_times)),
        "train_seconds": float(np.sum(epoch_times)),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        **scored,
    }
    if modality_heads is not None:
        modality_heads.load_state_dict(checkpoint["modality_heads"])
        heads = score_modality_heads(config, dataset, model, modality_heads, device, test)
        results["modality_heads"] = heads
    write_json_atomic(run_dir / "metrics.json", results)
    log_results(writer, run_dir, config, dataset, scored, best_epoch, results["seconds_per_epoch"])


def build_optimizer(
    config: Config, model: nn.Module, extra: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """Adam or AdamW as ``config.train`` says, with the fused (one kernel for all
    parameters) implementation: same update, several times faster on CPU. `extra`: the
    objective's parameters (learned prototypes, a distillation projection), after the
    model's, in the same group."""
    cfg = config.train
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = [*model.parameters(), *extra]
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return optimizer_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def build_scheduler(
    config: Config, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning rate cut by ``train.scheduler_factor`` when the dev loss stalls for
    ``train.scheduler_patience`` epochs; None when the patience is negative."""
    cfg = config.train
    if cfg.scheduler_patience < 0:
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience
    )


def build_loss(
    config: Config, dataset: Dataset, device: torch.device, model: nn.Module
) -> nn.Module:
    """Cross-entropy over the labelled utterances, classes weighted by their inverse
    train frequency when ``train.class_weights`` is on, label-smoothed by
    ``train.loss.label_smoothing``. With an auxiliary term of ``train.loss`` or
    ``train.distill`` on, the :class:`~corect.engine.objectives.Objective` around it,
    its hooks attached to `model`."""
    kind = "balanced" if config.train.class_weights else "none"
    weight = class_weights(dataset.splits["train"].labels, dataset.num_classes, kind)
    weight = weight.to(device) if weight is not None else None
    smoothing = config.train.loss.label_smoothing
    loss = nn.CrossEntropyLoss(weight=weight, ignore_index=-1, label_smoothing=smoothing)
    if not auxiliary_terms_on(config):
        return loss
    return build_objective(config, dataset, device, model, loss)
