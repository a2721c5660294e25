"""What a training run tells its reader while it runs: the log lines on stderr and the
TensorBoard records of ``RUN_DIR/events.*``.

TensorBoard tags: ``loss/<split>``, ``accuracy/<split>``, ``weighted_f1/<split>``,
``macro_f1/<split>`` (train and dev, every epoch), ``class_f1_dev/<label>``, ``lr``; at
the best epoch ``class_f1_test/<label>``, the confusion matrices ``confusion/<split>``
(image and Markdown table) and the hyperparameter table (``hparam/...``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from corect.common import plots
from corect.common.metrics import SCORES
from corect.config import Config
from corect.data.dataset import Dataset

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from corect.engine.training import EpochRecord

log = logging.getLogger("corect")


def log_start(
    config: Config, dataset: Dataset, model: nn.Module, device: torch.device, run_dir: Path
) -> None:
    """One line: the model, the data, the split sizes, the parameters, where it goes."""
    splits = dataset.splits
    log.info(
        "%s on %s (%s, %d classes): %d train / %d dev / %d test dialogues, %s parameters, "
        "device %s -> %s",
        config.model.name,
        dataset.name,
        config.data.modalities,
        dataset.num_classes,
        splits["train"].num_dialogues,
        splits["dev"].num_dialogues,
        splits["test"].num_dialogues,
        f"{sum(p.numel() for p in model.parameters()):,}",
        device,
        run_dir,
    )


def log_epoch(writer: SummaryWriter, record: EpochRecord, improved: bool) -> None:
    """The epoch's log line and its TensorBoard scalars (losses, scores, dev F1 per
    class, learning rate)."""
    epoch, train, dev = record.epoch, record.train, record.dev
    log.info(
        "epoch %3d  train loss %.4f acc %.4f wF1 %.4f | dev loss %.4f acc %.4f wF1 %.4f "
        "mF1 %.4f | lr %.2e | %.1fs%s",
        epoch,
        record.train_loss,
        train["accuracy"],
        train["weighted_f1"],
        record.dev_loss,
        dev["accuracy"],
        dev["weighted_f1"],
        dev["macro_f1"],
        record.lr,
        record.seconds,
        "  *best" if improved else "",
    )
    for split, metrics, loss in (
        ("train", train, record.train_loss),
        ("dev", dev, record.dev_loss),
    ):
        writer.add_scalar(f"loss/{split}", loss, epoch)
        for key in SCORES:
            writer.add_scalar(f"{key}/{split}", metrics[key], epoch)
    for label, value in dev["per_class_f1"].items():
        writer.add_scalar(f"class_f1_dev/{label}", value, epoch)
    writer.add_scalar("lr", record.lr, epoch)


def log_results(
    writer: SummaryWriter,
    run_dir: Path,
    config: Config,
    dataset: Dataset,
    scored: dict[str, dict[str, Any]],
    best_epoch: int,
    seconds_per_epoch: float,
) -> None:
    """The best checkpoint's scores (`scored`: dev, and test when it was scored): the
    confusion figures, test F1 per class, the hyperparameter table and the final line."""
    for split, metrics in scored.items():
        log_confusion(writer, run_dir, config, dataset, split, metrics, best_epoch)
    for label, value in scored.get("test", {}).get("per_class_f1", {}).items():
        writer.add_scalar(f"class_f1_test/{label}", value, best_epoch)
    log_hparams(writer, config, scored, best_epoch)
    test_line = (
        "test acc {accuracy:.4f} wF1 {weighted_f1:.4f} mF1 {macro_f1:.4f}".format(**scored["test"])
        if "test" in scored
        else "test not scored"
    )
    log.info(
        "best epoch %d: dev wF1 %.4f | %s | %.2fs/epoch",
        best_epoch,
        scored["dev"]["weighted_f1"],
        test_line,
        seconds_per_epoch,
    )


def log_hparams(
    writer: SummaryWriter, config: Config, scored: dict[str, dict[str, Any]], best_epoch: int
) -> None:
    """TensorBoard's hyperparameter table: the main settings beside the best scores."""
    hparams = {
        "model": config.model.name,
        "modalities": config.data.modalities,
        "causal": config.model.causal,
        "hidden_size": config.model.hidden_size,
        "wp": config.model.wp,
        "wf": config.model.wf,
        "lr": config.train.lr,
        "batch_size": config.train.batch_size,
        "seed": config.train.seed,
        "dropout": config.model.dropout,
    }
    test = scored.get("test")
    test_figures = (
        {f"hparam/test_{k}": test[k] for k in ("weighted_f1", "accuracy")} if test else {}
    )
    figures = {
        **test_figures,
        "hparam/dev_weighted_f1": scored["dev"]["weighted_f1"],
        "hparam/best_epoch": best_epoch,
    }
    writer.add_hparams(hparams, figures, run_name=".")


def log_confusion(
    writer: SummaryWriter,
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
