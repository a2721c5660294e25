"""Training one run (the loop behind ``python -m corect.train``, ``benchmark`` and
``compare_modes``).

Reads top to bottom: load the config and data, build the model, then for each epoch
train (:func:`corect.engine.runs.train_step`), score dev, step the scheduler, keep the best
checkpoint by dev weighted F1, stop early when dev stops improving; finally reload the
best checkpoint, score dev and test, and write everything into a run directory (a
non-finite loss stops the run with :class:`DivergedError`; a failed run's folder is
marked failed, or removed when it holds no checkpoint yet)::

    runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>/
        config.yaml      the resolved config
        checkpoint.pt    best state dict + config + what it was trained on (labels,
                         dims, dataset fingerprint); torch.load(weights_only=True)
        metrics.json     dev and test metrics, best epoch, time per epoch
        run.json         status: running, completed or failed (with the error)
        confusion-dev.png, confusion-test.png   labelled confusion matrices (corect.common.plots)
        events.*         TensorBoard (tensorboard --logdir runs)

A hyperparameter search (:mod:`corect.tune`) passes ``on_epoch``, called with the
epoch's dev figures, and ``test=False``: the test split is then never scored.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from corect.common.errors import InputError
from corect.common.files import write_json_atomic
from corect.common.metrics import classification_metrics
from corect.common.runtime import seed_everything, select_device, setup_logging, timestamp
from corect.config import Config, save_config
from corect.data.batching import iterate_batches, num_batches
from corect.data.format import Dataset
from corect.engine.losses import class_weights
from corect.engine.runs import (
    CHECKPOINT,
    RUN_STATUS,
    build_optimizer,
    evaluate_split,
    grad_scaler,
    load_checkpoint,
    load_data,
    model_for,
    save_checkpoint,
    train_step,
    write_run_status,
)

log = logging.getLogger("corect")
# Called after every epoch with its figures: epoch, train_loss, dev_loss, dev_accuracy,
# dev_weighted_f1, dev_macro_f1, best_dev_weighted_f1, best_epoch, lr.
EpochCallback = Callable[[dict[str, float]], None]


class DivergedError(InputError):
    """Training diverged (a non-finite loss); the run is not reported."""


def run_directory(config: Config, dataset: Dataset) -> Path:
    """``runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>``."""
    model = config.model.name + ("-causal" if config.model.causal else "")
    group = (
        Path(config.train.runs_dir)
        / dataset.name
        / (f"{config.data.modalities}--{dataset.task}--{model}")
    )
    name = config.train.run_name or (f"{timestamp()}-seed{config.train.seed}")
    path, k = group / name, 1
    while path.exists():
        path, k = group / f"{name}-{k}", k + 1
    path.mkdir(parents=True)
    return path


def log_confusion(
    writer: Any,
    run_dir: Path,
    config: Config,
    dataset: Dataset,
    split: str,
    metrics: dict[str, Any],
    step: int,
) -> None:
    """The confusion matrix of `split` as a labelled figure (TensorBoard image
    ``confusion/<split>`` and ``run_dir/confusion-<split>.png``; a failure to draw only
    logs a warning) and as a Markdown table."""
    from corect.common import plots

    confusion, labels = metrics["confusion"], dataset.labels
    title = plots.run_title(dataset.name, config.model.name, config.model.causal, split)
    png = None
    if config.train.figures:
        png = plots.save_confusion(run_dir, split, confusion, labels, title)
    if png is not None:
        with plots.never_fatal(f"the {split} confusion matrix in TensorBoard"):
            writer.add_image(f"confusion/{split}", plots.png_pixels(png), step, dataformats="HWC")
    header = "| true \\ pred | " + " | ".join(labels) + " |\n|" + "---|" * (len(labels) + 1)
    body = "\n".join(
        f"| {labels[i]} | " + " | ".join(str(int(x)) for x in row) + " |"
        for i, row in enumerate(confusion)
    )
    writer.add_text(f"confusion/{split}", header + "\n" + body, step)


def train(config: Config, *, on_epoch: EpochCallback | None = None, test: bool = True) -> Path:
    """Train one model as described by `config`; return its run directory. `on_epoch`
    gets every epoch's figures once dev is scored; with `test` False the test split is
    never scored (metrics.json then holds dev only)."""
    from torch.utils.tensorboard import SummaryWriter

    setup_logging()
    generator = seed_everything(config.train.seed)
    device = select_device(config.train.device)
    dataset = load_data(config)
    model = model_for(config, dataset).to(device)
    run_dir = run_directory(config, dataset)
    save_config(config, run_dir / "config.yaml")
    write_run_status(run_dir, "running")
    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        fit(config, dataset, model, device, generator, run_dir, writer, on_epoch, test)
    except BaseException as err:
        writer.close()
        abandon_run(run_dir, err)
        raise
    writer.close()
    write_run_status(run_dir, "completed")
    return run_dir


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
    if (run_dir / CHECKPOINT).is_file():
        status = "stopped" if stopped else "failed"
        write_run_status(run_dir, status, error=reason)
        note = f"the run is marked {status} in {run_dir / RUN_STATUS}"
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


def fit(
    config: Config,
    dataset: Dataset,
    model: nn.Module,
    device: torch.device,
    generator: torch.Generator,
    run_dir: Path,
    writer: Any,
    on_epoch: EpochCallback | None = None,
    test: bool = True,
) -> None:
    """The epochs of one run, then the best checkpoint scored on dev and test (unless
    `test` is False; `on_epoch` gets each epoch's dev figures); writes
    checkpoint.pt, metrics.json, the figures and TensorBoard logs into `run_dir`.
    Raises :class:`DivergedError` on a non-finite loss."""
    train_split, dev_split, test_split = (dataset.splits[s] for s in ("train", "dev", "test"))
    num_parameters = sum(p.numel() for p in model.parameters())
    log.info(
        "%s on %s (%s, %d classes): %d train / %d dev / %d test dialogues, %s parameters, "
        "device %s -> %s",
        config.model.name,
        dataset.name,
        config.data.modalities,
        dataset.num_classes,
        train_split.num_dialogues,
        dev_split.num_dialogues,
        test_split.num_dialogues,
        f"{num_parameters:,}",
        device,
        run_dir,
    )

    cfg = config.train
    optimizer = build_optimizer(config, model)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience
        )
        if cfg.scheduler_patience >= 0
        else None
    )
    kind = "balanced" if cfg.class_weights else "none"
    weight = class_weights(train_split.labels, dataset.num_classes, kind)
    weight = weight.to(device) if weight is not None else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    scaler = grad_scaler(config, device)

    best_f1, best_epoch, epoch_times = -1.0, 0, []
    checkpoint = run_dir / CHECKPOINT
    for epoch in range(1, cfg.epochs + 1):
        # --- train one epoch ---
        model.train()
        start = time.perf_counter()
        total_loss, total_count, predictions, targets = 0.0, 0, [], []
        batches = iterate_batches(
            train_split,
            cfg.batch_size,
            shuffle=True,
            generator=generator,
            bucket_by_length=cfg.bucket_by_length,
        )
        bar = tqdm(
            batches,
            total=num_batches(train_split, cfg.batch_size),
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
            bar.set_postfix(loss=f"{loss.item():.3f}")
        epoch_times.append(time.perf_counter() - start)
        train_metrics = classification_metrics(
            torch.cat(targets).numpy(), torch.cat(predictions).numpy(), dataset.labels
        )
        train_loss = total_loss / max(total_count, 1)

        # --- score dev, schedule, select ---
        dev_metrics, dev_loss = evaluate_split(
            model, dev_split, dataset.labels, cfg.batch_size, device, cfg.amp
        )
        if not math.isfinite(dev_loss) and bool((dev_split.labels >= 0).any()):
            raise DivergedError(
                f"training diverged: the dev loss is {dev_loss} after epoch {epoch} "
                f"(train.lr={cfg.lr:g}); lower train.lr or set train.grad_clip"
            )
        if scheduler is not None:
            scheduler.step(dev_loss)
        lr = optimizer.param_groups[0]["lr"]
        improved = dev_metrics["weighted_f1"] > best_f1
        if improved:
            best_f1, best_epoch = dev_metrics["weighted_f1"], epoch
            save_checkpoint(checkpoint, model, config, dataset, epoch)
        log.info(
            "epoch %3d  train loss %.4f acc %.4f wF1 %.4f | dev loss %.4f acc %.4f wF1 %.4f "
            "mF1 %.4f | lr %.2e | %.1fs%s",
            epoch,
            train_loss,
            train_metrics["accuracy"],
            train_metrics["weighted_f1"],
            dev_loss,
            dev_metrics["accuracy"],
            dev_metrics["weighted_f1"],
            dev_metrics["macro_f1"],
            lr,
            epoch_times[-1],
            "  *best" if improved else "",
        )
        for split_name, metrics, loss_value in (
            ("train", train_metrics, train_loss),
            ("dev", dev_metrics, dev_loss),
        ):
            writer.add_scalar(f"loss/{split_name}", loss_value, epoch)
            writer.add_scalar(f"accuracy/{split_name}", metrics["accuracy"], epoch)
            writer.add_scalar(f"weighted_f1/{split_name}", metrics["weighted_f1"], epoch)
            writer.add_scalar(f"macro_f1/{split_name}", metrics["macro_f1"], epoch)
        for label, value in dev_metrics["per_class_f1"].items():
            writer.add_scalar(f"class_f1_dev/{label}", value, epoch)
        writer.add_scalar("lr", lr, epoch)
        if on_epoch is not None:
            on_epoch(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "dev_loss": dev_loss,
                    **{f"dev_{k}": dev_metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")},
                    "best_dev_weighted_f1": best_f1,
                    "best_epoch": best_epoch,
                    "lr": lr,
                }
            )
        if cfg.early_stopping and epoch - best_epoch >= cfg.early_stopping:
            log.info("early stop: no dev weighted-F1 gain for %d epochs", cfg.early_stopping)
            break

    # --- reload the best checkpoint and score it exactly as corect.evaluate does ---
    model.load_state_dict(load_checkpoint(run_dir, device)["state_dict"])
    scored: dict[str, dict[str, Any]] = {}
    for split_name, split in {"dev": dev_split, **({"test": test_split} if test else {})}.items():
        metrics, loss = evaluate_split(
            model, split, dataset.labels, cfg.batch_size, device, cfg.amp
        )
        scored[split_name] = {**metrics, "loss": loss}
    dev_metrics = scored["dev"]
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
        "num_parameters": num_parameters,
        "device": str(device),
        **scored,
    }
    write_json_atomic(run_dir / "metrics.json", results)
    for split_name, metrics in scored.items():
        log_confusion(writer, run_dir, config, dataset, split_name, metrics, best_epoch)
    for label, value in scored.get("test", {}).get("per_class_f1", {}).items():
        writer.add_scalar(f"class_f1_test/{label}", value, best_epoch)
    hparams = {
        "model": config.model.name,
        "modalities": config.data.modalities,
        "causal": config.model.causal,
        "hidden_size": config.model.hidden_size,
        "wp": config.model.wp,
        "wf": config.model.wf,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "dropout": config.model.dropout,
    }
    test_figures = (
        {f"hparam/test_{k}": scored["test"][k] for k in ("weighted_f1", "accuracy")} if test else {}
    )
    writer.add_hparams(
        hparams,
        {
            **test_figures,
            "hparam/dev_weighted_f1": dev_metrics["weighted_f1"],
            "hparam/best_epoch": best_epoch,
        },
        run_name=".",
    )
    test_line = (
        "test acc {accuracy:.4f} wF1 {weighted_f1:.4f} mF1 {macro_f1:.4f}".format(**scored["test"])
        if test
        else "test not scored"
    )
    log.info(
        "best epoch %d: dev wF1 %.4f | %s | %.2fs/epoch",
        best_epoch,
        dev_metrics["weighted_f1"],
        test_line,
        results["seconds_per_epoch"],
    )
