"""The settings of a fine-tuning run, checked before any work, and where its model goes
by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from corect.data.dataset import Dataset
from corect.engine.losses import CLASS_WEIGHTS
from data_prep.options import ConversionError

# What trains (not corect.config.MODES, the offline/causal modes of the conversation model).
FINETUNE_MODES = ("full", "lora", "frozen")
DEFAULT_OUT_ROOT = Path("runs/text_models")
FIT_SPLIT, SELECT_SPLIT = "train", "dev"
# Settings of how a run goes, not of the model it makes: not recorded, free to change on --resume.
RUN_OPTIONS = ("progress", "resume", "save_every_steps")
DEFAULT_SAVE_EVERY = 200  # steps between saves of the resumable state (a few CPU minutes)


class FinetuneError(ConversionError):
    """Bad fine-tuning input or settings; the message names the file and field."""


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (recorded in the model directory)."""

    data: Path
    out: Path | None = None
    model: Path | None = None
    mode: str = "full"
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_length: int = 128
    context: int = 0
    class_weights: str = "none"
    seed: int = 0
    max_steps: int | None = None
    device: str | None = None  # None or "" = CUDA when available, else the CPU
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = None
    progress: bool = True
    resume: bool = False  # continue from the state saved beside `out`
    save_every_steps: int = DEFAULT_SAVE_EVERY  # 0 = save the state only after each epoch


def check_config(config: FinetuneConfig) -> None:
    """Refuse settings that cannot work, naming the option."""
    if config.mode not in FINETUNE_MODES:
        raise FinetuneError(f"--mode {config.mode!r}: use one of {', '.join(FINETUNE_MODES)}")
    if config.class_weights not in CLASS_WEIGHTS:
        raise FinetuneError(f"--class-weights {config.class_weights!r}: use {CLASS_WEIGHTS}")
    if config.epochs < 1 or config.batch_size < 1 or config.context < 0:
        raise FinetuneError("--epochs and --batch-size must be >= 1, --context >= 0")
    if config.save_every_steps < 0:
        raise FinetuneError(f"--save-every-steps {config.save_every_steps}: use 0 or more")
    if config.max_length < 8:
        raise FinetuneError(f"--max-length {config.max_length}: use at least 8")


def default_out(dataset: Dataset, config: FinetuneConfig) -> Path:
    """runs/text_models/<name>_<task>_<mode>[_ctx<K>]_seed<S>."""
    context = f"_ctx{config.context}" if config.context else ""
    return (
        DEFAULT_OUT_ROOT / f"{dataset.name}_{dataset.task}_{config.mode}{context}_seed{config.seed}"
    )
