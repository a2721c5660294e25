"""Fine-tuning a local Hugging Face text encoder as an utterance classifier: the library
behind ``python -m data_prep.finetune_text`` (see that command for the user's view).

The classifier is the encoder's sentence embedding (mean pooling over the attention mask,
L2-normalised: :func:`corect.data.text_encoder.embed_batch`, the very function the feature
writer uses) scaled by sqrt(dim), then one linear layer. Only the train split is fitted,
the epoch is chosen by dev weighted F1, the test split is never read. The saved directory
is a plain Hugging Face model (``model.safetensors``, tokenizer, ``config.json``), plus
``sentence_bert_config.json`` (its max length), the classifier head
(``classifier_head.safetensors``) and ``corect_finetune.json``, the record of how it was
made, which the feature writer reads (past context). It is written into a temporary
sibling directory and renamed into place, so an interrupted run never leaves a partial
model and never damages a previous one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from corect.common.files import atomic_directory
from corect.common.metrics import classification_metrics
from corect.data.format import Dataset, load_dataset
from corect.data.text_encoder import (
    RECORD_FILE,
    bundled_model_path,
    context_inputs,
    embed_batch,
    model_identity,
)
from data_prep.options import ConversionError
from data_prep.output import check_output_folder

MODES = ("full", "lora", "frozen")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
DEFAULT_OUT_ROOT = Path("runs/text_models")
FIT_SPLIT, SELECT_SPLIT = "train", "dev"
# sentence-transformers files copied from the base model, so the result also loads there.
_ST_FILES = ("modules.json", "config_sentence_transformers.json", "1_Pooling")


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
    device: str | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = None
    progress: bool = True


@dataclass
class Utterances:
    """The labelled utterances of one split: model inputs and class ids."""

    inputs: list[str]
    labels: list[int]


@dataclass
class FinetuneResult:
    """Where the model went and how it scored."""

    out: Path
    record: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def read_utterances(dataset: Dataset, split: str, context: int, separator: str) -> Utterances:
    """The labelled utterances of `split` as model inputs (unlabelled ones still serve as
    past context). The loader has checked the texts file against the split (one list of
    strings per dialogue, of the right length); here it must exist."""
    data = dataset.splits[split]
    if data.texts is None:
        text_file = Path(dataset.path or ".") / f"{split}.texts.json"
        raise FinetuneError(
            f"{text_file}: missing; fine-tuning needs the utterance texts (convert the "
            "dataset with data_prep.meld or data_prep.jsonl, which store them)"
        )
    inputs: list[str] = []
    labels: list[int] = []
    offsets = data.offsets.tolist()
    for d, texts in enumerate(data.texts):
        start, end = offsets[d], offsets[d + 1]
        speakers = [dataset.speaker_names[int(s)] for s in data.speakers[start:end]]
        for text, label in zip(
            context_inputs(texts, speakers, context, separator),
            data.labels[start:end].tolist(),
            strict=True,
        ):
            if label >= 0:
                inputs.append(text)
                labels.append(int(label))
    if not labels:
        raise FinetuneError(f"{dataset.path}: split {split!r} has no labelled utterances")
    return Utterances(inputs, labels)


def class_weights(labels: Sequence[int], num_classes: int, kind: str) -> torch.Tensor | None:
    """Loss weights per class: 'balanced' = n / (C * count), 'sqrt' = its square root
    (gentler), 'none' = None. Classes absent from `labels` get weight 1."""
    if kind == "none":
        return None
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    if kind == "sqrt":
        weights = np.sqrt(weights)
    return torch.tensor(weights, dtype=torch.float32)


def length_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 50
) -> list[list[int]]:
    """Training batches of similar lengths (little padding) in random order: the indices
    are shuffled, cut into pools of `pool` batches, each pool sorted by length and cut into
    batches, and the batches shuffled."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    size = batch_size * pool
    for start in range(0, len(order), size):
        chunk = sorted(order[start : start + size], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


# --------------------------------------------------------------------------- model


def pick_device(requested: str | None) -> torch.device:
    """`requested`, or CUDA when available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base(model_dir: Path, progress: bool = True) -> tuple[Any, Any]:
    """(tokenizer, encoder) of a local model directory; nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()

    if not (model_dir / "config.json").is_file():
        raise FinetuneError(
            f"{model_dir}: not a local Hugging Face model directory (config.json missing)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        encoder = AutoModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FinetuneError(f"{model_dir}: cannot load the model: {err}") from err
    return tokenizer, encoder


def add_lora(encoder: Any, config: FinetuneConfig) -> Any:
    """`encoder` wrapped with LoRA adapters (only they train)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise FinetuneError("--mode lora needs the package 'peft': pip install -e .[lora]") from err
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
    )
    try:
        return get_peft_model(encoder, lora)
    except ValueError as err:
        raise FinetuneError(f"--mode lora: {err} (give --lora-targets)") from err


def embed(
    encoder: Any, tokenizer: Any, inputs: Sequence[str], config: FinetuneConfig, device: Any
) -> torch.Tensor:
    """Sentence embeddings of `inputs` in eval mode, longest first, as float32 on CPU."""
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    out = torch.zeros(len(inputs), encoder.config.hidden_size)
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(order), config.eval_batch_size):
            index = order[start : start + config.eval_batch_size]
            batch = [inputs[i] for i in index]
            out[index] = (
                embed_batch(encoder, tokenizer, batch, config.max_length, device).float().cpu()
            )
    encoder.train(was_training)
    return out


def _autocast(device: torch.device) -> Any:
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op on the CPU."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- training


def _check(config: FinetuneConfig) -> None:
    """Refuse settings that cannot work, naming the option."""
    if config.mode not in MODES:
        raise FinetuneError(f"--mode {config.mode!r}: use one of {', '.join(MODES)}")
    if config.class_weights not in CLASS_WEIGHTS:
        raise FinetuneError(f"--class-weights {config.class_weights!r}: use {CLASS_WEIGHTS}")
    if config.epochs < 1 or config.batch_size < 1 or config.context < 0:
        raise FinetuneError("--epochs and --batch-size must be >= 1, --context >= 0")
    if config.max_length < 8:
        raise FinetuneError(f"--max-length {config.max_length}: use at least 8")


@dataclass
class _Trainer:
    """What one fine-tuning run trains: encoder, head, optimizer and their settings."""

    config: FinetuneConfig
    device: torch.device
    tokenizer: Any
    encoder: Any
    head: torch.nn.Linear
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    scaler: Any
    total_steps: int
    frozen_train: torch.Tensor | None = None  # embeddings, when the encoder never changes
    frozen_dev: torch.Tensor | None = None
    step: int = 0

    @property
    def scale(self) -> float:
        """Unit-norm embeddings times sqrt(dim): unit-variance head inputs."""
        return math.sqrt(self.head.in_features)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def train_epoch(self, train: Utterances, batches: list[list[int]], desc: str) -> float:
        """One pass over `batches` of `train`; the mean training loss."""
        config, device = self.config, self.device
        self.encoder.train(config.mode != "frozen")
        self.head.train()
        labels = torch.tensor(train.labels)
        bar = tqdm(batches, desc=desc, unit="batch", disable=not config.progress)
        total_loss, seen = 0.0, 0
        for index in bar:
            if self.step >= self.total_steps:
                break
            with _autocast(device):
                if self.frozen_train is not None:
                    pooled = self.frozen_train[index].to(device)
                else:
                    batch = [train.inputs[i] for i in index]
                    pooled = embed_batch(
                        self.encoder, self.tokenizer, batch, config.max_length, device
                    )
                logits = self.head(pooled.float() * self.scale)
                loss = self.loss_fn(logits.float(), labels[index].to(device))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            total_loss += float(loss.detach()) * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        bar.close()
        return total_loss / max(seen, 1)

    def predict_dev(self, dev: Utterances) -> np.ndarray:
        """Class ids the current encoder + head give the dev utterances."""
        pooled = self.frozen_dev
        if pooled is None:
            pooled = embed(self.encoder, self.tokenizer, dev.inputs, self.config, self.device)
        with torch.inference_mode():
            logits = self.head(pooled.to(self.device) * self.scale)
        return logits.argmax(-1).cpu().numpy()

    def snapshot(self) -> dict[str, dict[str, torch.Tensor]]:
        """CPU copies of the weights that train (full: all; lora: adapters) and the head."""

        def copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

        encoder = {
            k: v
            for k, v in self.encoder.state_dict().items()
            if self.config.mode == "full" or "lora_" in k
        }
        return {"encoder": copy(encoder), "head": copy(self.head.state_dict())}


def _build_trainer(
    config: FinetuneConfig,
    device: torch.device,
    tokenizer: Any,
    encoder: Any,
    train: Utterances,
    dev: Utterances,
    num_classes: int,
) -> tuple[_Trainer, torch.Tensor | None]:
    """Head, optimizer (AdamW, warm-up then linear decay), loss; and the class weights."""
    if config.mode == "lora":
        encoder = add_lora(encoder, config)
    elif config.mode == "frozen":
        encoder.requires_grad_(False)
    encoder.to(device)
    head = torch.nn.Linear(int(encoder.config.hidden_size), num_classes).to(device)
    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    groups = [{"params": list(head.parameters()), "lr": config.head_lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(len(train.labels) / config.batch_size)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup * total_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    weights = class_weights(train.labels, num_classes, config.class_weights)
    trainer = _Trainer(
        config=config,
        device=device,
        tokenizer=tokenizer,
        encoder=encoder,
        head=head,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        loss_fn=torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device)),
        scaler=torch.amp.GradScaler(
            "cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported()
        ),
        total_steps=total_steps,
    )
    if config.mode == "frozen":  # the encoder never changes: embed once
        trainer.frozen_train = embed(encoder, tokenizer, train.inputs, config, device)
        trainer.frozen_dev = embed(encoder, tokenizer, dev.inputs, config, device)
    return trainer, weights


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Run one fine-tuning as `config` says and save the adapted model directory."""
    _check(config)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    _seed_everything(config.seed)
    device = pick_device(config.device)
    base_dir = Path(config.model) if config.model else bundled_model_path()

    dataset = load_dataset(config.data, splits=(FIT_SPLIT, SELECT_SPLIT))
    out = config.out or default_out(dataset, config)
    check_output_folder(out, (config.data, base_dir), model_dir_refusal)
    tokenizer, encoder = load_base(base_dir, config.progress)
    separator = ""
    if config.context:
        separator = f" {tokenizer.sep_token} " if tokenizer.sep_token else " | "
        tokenizer.truncation_side = "left"  # drop the oldest context first
    train = read_utterances(dataset, FIT_SPLIT, config.context, separator)
    dev = read_utterances(dataset, SELECT_SPLIT, config.context, separator)
    trainer, weights = _build_trainer(
        config, device, tokenizer, encoder, train, dev, dataset.num_classes
    )

    lengths = [len(t) for t in train.inputs]
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"weighted_f1": -1.0}
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        tic = time.perf_counter()
        batches = length_batches(lengths, config.batch_size, generator)
        train_loss = trainer.train_epoch(train, batches, f"epoch {epoch}/{config.epochs}")
        train_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
        scores = classification_metrics(
            np.array(dev.labels), trainer.predict_dev(dev), dataset.labels
        )
        entry = {
            "epoch": epoch,
            "steps": trainer.step,
            "train_loss": train_loss,
            "dev_weighted_f1": scores["weighted_f1"],
            "dev_accuracy": scores["accuracy"],
            "train_seconds": round(train_seconds, 2),
            "dev_seconds": round(time.perf_counter() - tic, 2),
        }
        history.append(entry)
        if config.progress:
            print(
                f"epoch {epoch}: train loss {train_loss:.4f}, dev weighted F1 "
                f"{scores['weighted_f1']:.4f}",
                file=sys.stderr,
            )
        if scores["weighted_f1"] > best["weighted_f1"]:
            best = {"weighted_f1": scores["weighted_f1"], "epoch": epoch, **trainer.snapshot()}
        if trainer.step >= trainer.total_steps:
            break

    encoder = trainer.encoder
    if best["encoder"]:
        encoder.load_state_dict(best["encoder"], strict=False)
    trainer.head.load_state_dict(best["head"])
    if config.mode == "lora":
        encoder = encoder.merge_and_unload()
    encoder.to("cpu").eval()

    record = {
        "created_by": "data_prep.finetune_text",
        "base_model": str(base_dir),
        "base_identity": model_identity(base_dir, config.max_length),
        "dataset": {"path": str(config.data), "name": dataset.name, "task": dataset.task},
        "train_split": FIT_SPLIT,
        "selection_split": SELECT_SPLIT,
        "test_split_read": False,
        "labels": list(dataset.labels),
        "train_utterances": len(train.labels),
        "dev_utterances": len(dev.labels),
        "mode": config.mode,
        "epochs": config.epochs,
        "epochs_run": len(history),
        "steps": trainer.step,
        "best_epoch": best["epoch"],
        "dev_weighted_f1": best["weighted_f1"],
        "history": history,
        "seed": config.seed,
        "context": {"utterances": config.context, "separator": separator, "causal": True},
        "pooling": "mean over attention mask, L2-normalised (as corect.data.text_encoder)",
        "class_weights": None
        if weights is None
        else dict(zip(dataset.labels, weights.tolist(), strict=True)),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k not in ("data", "out", "model", "progress")
        },
        "device": str(device),
        "mixed_precision": device.type == "cuda",
        "versions": _versions(),
        "time": {
            "started": started.isoformat(timespec="seconds"),
            "train_seconds": round(train_seconds, 2),
            "total_seconds": round(time.perf_counter() - clock, 2),
        },
    }
    save_model(out, encoder, tokenizer, trainer.head, base_dir, record)
    return FinetuneResult(Path(out), record)


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    return versions


def default_out(dataset: Dataset, config: FinetuneConfig) -> Path:
    """runs/text_models/<name>_<task>_<mode>[_ctx<K>]_seed<S>."""
    context = f"_ctx{config.context}" if config.context else ""
    return (
        DEFAULT_OUT_ROOT / f"{dataset.name}_{dataset.task}_{config.mode}{context}_seed{config.seed}"
    )


def model_dir_refusal(path: Path) -> str | None:
    """Why `path` must not be replaced by a fine-tuned model, or None: it is empty or a
    model directory of ours (it has corect_finetune.json)."""
    if any(path.iterdir()) and not (path / RECORD_FILE).is_file():
        return f"is not a model directory written by this command (no {RECORD_FILE})"
    return None


def save_model(
    out: Path,
    encoder: Any,
    tokenizer: Any,
    head: torch.nn.Module,
    base_dir: Path,
    record: dict[str, Any],
) -> Path:
    """Write the model directory atomically (temporary sibling, then renamed)."""
    with atomic_directory(out, model_dir_refusal) as tmp:
        encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in _ST_FILES:
            source = base_dir / name
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            elif source.is_file():
                shutil.copy2(source, tmp / name)
        max_length = record["settings"]["max_length"]
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=1) + "\n"
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
            str(tmp / "classifier_head.safetensors"),
        )
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return out
