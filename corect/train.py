"""Train a model: ``python -m corect.train [--config configs/X.yaml] [--set key=value ...]``.

Reads top to bottom: load the config and data, build the model, then for each epoch
train, score dev, step the scheduler, keep the best checkpoint by dev weighted F1, stop
early when dev stops improving; finally reload the best checkpoint, score dev and test,
and write everything into a run directory::

    runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>/
        config.yaml      the resolved config
        checkpoint.pt    best state dict + config + label names (torch.load weights_only)
        metrics.json     dev and test metrics, best epoch, time per epoch
        confusion-dev.png, confusion-test.png   labelled confusion matrices (corect.plots)
        events.*         TensorBoard (tensorboard --logdir runs)

The last line printed on stdout is the run directory.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from corect.config import Config, ConfigError, add_overrides_argument, load_config, save_config
from corect.data.batching import drop_modalities, iterate_batches, num_batches
from corect.data.format import Dataset, DatasetError, SplitData, load_dataset
from corect.data.synthetic import ensure_synthetic_dataset
from corect.io import atomic_target, write_json_atomic
from corect.metrics import classification_metrics
from corect.models import build_model
from corect.runtime import keep_freed_memory

log = logging.getLogger("corect")
CHECKPOINT = "checkpoint.pt"


def setup_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def select_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that orders the batches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def run_directory(config: Config, dataset: Dataset) -> Path:
    """``runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>``."""
    model = config.model.name + ("-causal" if config.model.causal else "")
    group = (
        Path(config.train.runs_dir)
        / dataset.name
        / (f"{config.data.modalities}--{dataset.task}--{model}")
    )
    name = config.train.run_name or (
        f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-seed{config.train.seed}"
    )
    path, k = group / name, 1
    while path.exists():
        path, k = group / f"{name}-{k}", k + 1
    path.mkdir(parents=True)
    return path


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision on CUDA (bfloat16 where supported, else float16); off on CPU."""
    use = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=use)


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


def class_weights(split: SplitData, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to mean 1."""
    counts = torch.bincount(split.labels[split.labels >= 0], minlength=num_classes).float()
    weights = counts.sum() / (num_classes * counts.clamp(min=1))
    return weights / weights.mean()


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW as ``config.train`` says, with the fused (one kernel for all
    parameters) implementation: same update, several times faster on CPU."""
    cfg = config.train
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = list(model.parameters())
    fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return optimizer_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def save_checkpoint(
    path: Path, model: nn.Module, config: Config, dataset: Dataset, epoch: int
) -> None:
    """State dict + config + label names; plain types only, so it loads with
    ``torch.load(path, weights_only=True)``. Written atomically."""
    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "labels": list(dataset.labels),
        "dims": dict(dataset.dims),
        "num_speakers": config.model.num_speakers or dataset.max_parties,
        "dataset": dataset.name,
        "task": dataset.task,
        "epoch": epoch,
    }
    with atomic_target(path) as tmp:
        torch.save(checkpoint, tmp)


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
    from corect import plots

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


def train(config: Config) -> Path:
    """Train one model as described by `config`; return its run directory."""
    from torch.utils.tensorboard import SummaryWriter

    setup_logging()
    generator = seed_everything(config.train.seed)
    device = select_device(config.train.device)
    dataset = load_data(config)
    train_split, dev_split, test_split = (dataset.splits[s] for s in ("train", "dev", "test"))
    model = model_for(config, dataset).to(device)
    num_parameters = sum(p.numel() for p in model.parameters())
    run_dir = run_directory(config, dataset)
    save_config(config, run_dir / "config.yaml")
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
    weight = (
        class_weights(train_split, dataset.num_classes).to(device) if cfg.class_weights else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    writer = SummaryWriter(log_dir=str(run_dir))

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
        for batch in bar:
            batch = drop_modalities(batch, cfg.modality_dropout, generator).to(device)
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
            count = int((batch.labels >= 0).sum())
            total_loss += loss.item() * count
            total_count += count
            predictions.append(logits.argmax(1).cpu())
            targets.append(batch.labels.cpu())
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
        if cfg.early_stopping and epoch - best_epoch >= cfg.early_stopping:
            log.info("early stop: no dev weighted-F1 gain for %d epochs", cfg.early_stopping)
            break

    # --- reload the best checkpoint and score it exactly as corect.evaluate does ---
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    dev_metrics, dev_loss = evaluate_split(
        model, dev_split, dataset.labels, cfg.batch_size, device, cfg.amp
    )
    test_metrics, test_loss = evaluate_split(
        model, test_split, dataset.labels, cfg.batch_size, device, cfg.amp
    )
    dev_metrics["loss"], test_metrics["loss"] = dev_loss, test_loss
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
        "dev": dev_metrics,
        "test": test_metrics,
    }
    write_json_atomic(run_dir / "metrics.json", results)
    for split_name, metrics in (("dev", dev_metrics), ("test", test_metrics)):
        log_confusion(writer, run_dir, config, dataset, split_name, metrics, best_epoch)
    for label, value in test_metrics["per_class_f1"].items():
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
    writer.add_hparams(
        hparams,
        {
            "hparam/test_weighted_f1": test_metrics["weighted_f1"],
            "hparam/test_accuracy": test_metrics["accuracy"],
            "hparam/dev_weighted_f1": dev_metrics["weighted_f1"],
            "hparam/best_epoch": best_epoch,
        },
        run_name=".",
    )
    writer.close()
    log.info(
        "best epoch %d: dev wF1 %.4f | test acc %.4f wF1 %.4f mF1 %.4f | %.2fs/epoch",
        best_epoch,
        dev_metrics["weighted_f1"],
        test_metrics["accuracy"],
        test_metrics["weighted_f1"],
        test_metrics["macro_f1"],
        results["seconds_per_epoch"],
    )
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.train",
        description=(
            "Train CORECT or a fusion baseline. With no --config, trains CORECT (t+a+v) on "
            "the embedded synthetic dataset with the published hyperparameters. Every "
            "config key can be changed with --set, e.g. --set model.causal=true "
            "train.epochs=10 data.modalities=ta. Writes runs/<dataset>/<modalities>--"
            "<task>--<model>/<date-time>-seed<seed>/ and prints that path last."
        ),
    )
    parser.add_argument("--config", help="YAML config (see configs/); default: built-in")
    add_overrides_argument(
        parser, "override config values (YAML syntax), e.g. train.seed=3 model.name=early"
    )
    parser.add_argument("--device", help="shortcut for --set train.device=... (auto|cpu|cuda)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.quiet:
        overrides.append("train.progress=false")
    try:
        config = load_config(args.config, overrides)
        run_dir = train(config)
    except (ConfigError, DatasetError) as err:
        sys.exit(f"error: {err}")
    print(run_dir)


if __name__ == "__main__":
    main()
