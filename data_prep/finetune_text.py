"""Fine-tune a local Hugging Face text encoder as an utterance classifier on a corect
dataset's train split, pick the epoch by dev weighted F1, and save the adapted encoder.

    python -m data_prep.finetune_text --data runs/data/meld_emotion --mode full
    python -m data_prep.meld --csv-dir MELD --text-model runs/text_models/meld_emotion_full

The input is a dataset directory written by the converters (``data_prep.meld``,
``data_prep.jsonl``, ...): they store each split's utterance texts (``<split>.texts.json``)
and speakers (manifest ``speakers`` + per-utterance index), so one reader serves every
source, labels are already mapped, and the train/dev split is the one the conversation
model uses. Only the train and dev files are opened; the test split is never read.

The classifier is the encoder's sentence embedding (mean pooling over the attention mask,
L2-normalised: :func:`corect.data.text_encoder.embed_batch`, the very function the feature
writer uses) scaled by sqrt(dim), then one linear layer. The saved directory is a plain
Hugging Face model (``model.safetensors``, tokenizer, ``config.json``), plus
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

from corect.data.format import Dataset, load_dataset
from corect.data.text_encoder import (
    RECORD_FILE,
    bundled_model_path,
    context_inputs,
    embed_batch,
    model_identity,
)
from corect.io import atomic_directory, inside
from corect.metrics import classification_metrics
from data_prep.options import ConversionError, HelpFormatter, run_main

MODES = ("full", "lora", "frozen")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
DEFAULT_OUT_ROOT = Path("runs/text_models")
FIT_SPLIT, SELECT_SPLIT = "train", "dev"
# sentence-transformers files copied from the base model, so the result also loads there.
_ST_FILES = ("modules.json", "config_sentence_transformers.json", "1_Pooling")

DESCRIPTION = f"""\
Fine-tune a local Hugging Face text encoder (default: the bundled all-MiniLM-L6-v2) as an
utterance classifier on a corect dataset's train split; the epoch is chosen by dev
weighted F1 and the test split is never read. The result is a plain Hugging Face model
directory for --text-model of data_prep.meld / data_prep.jsonl (features: mean pooling +
L2 norm, cached under a key that fingerprints the new weights).

modes:
  full     every encoder weight is trained
  lora     low-rank adapters (peft: pip install -e .[lora]), merged into the saved weights
  frozen   only the classifier head is trained; the saved encoder equals the base

--context K: utterance i's input is the K previous utterances and itself, each as
"speaker: text", joined by the tokenizer's separator token (past only: causal). The
setting is recorded in {RECORD_FILE}; the feature writer builds the same inputs.

CPU by default (CUDA with mixed precision when available, or --device); set
OMP_NUM_THREADS to bound CPU threads. --max-steps N stops early, e.g. to time a run.
"""


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
    past context). Fails naming the file and field when texts are missing or misaligned."""
    data = dataset.splits[split]
    text_file = Path(dataset.path or ".") / f"{split}.texts.json"
    if data.texts is None:
        raise FinetuneError(
            f"{text_file}: missing; fine-tuning needs the utterance texts (convert the "
            "dataset with data_prep.meld or data_prep.jsonl, which store them)"
        )
    if len(data.texts) != data.num_dialogues:
        raise FinetuneError(
            f"{text_file}: {len(data.texts)} dialogues, the manifest's field 'splits.{split}' "
            f"lists {data.num_dialogues}"
        )
    inputs: list[str] = []
    labels: list[int] = []
    offsets = data.offsets.tolist()
    for d, (dialogue_id, texts) in enumerate(zip(data.dialogue_ids, data.texts, strict=True)):
        start, end = offsets[d], offsets[d + 1]
        if not isinstance(texts, list) or len(texts) != end - start:
            size = len(texts) if isinstance(texts, list) else type(texts).__name__
            raise FinetuneError(
                f"{text_file}: dialogue {dialogue_id!r} has {size} texts, expected "
                f"{end - start} (field 'offsets' of {split}.safetensors)"
            )
        if not all(isinstance(t, str) for t in texts):
            raise FinetuneError(f"{text_file}: dialogue {dialogue_id!r}: a text is not a string")
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


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Run one fine-tuning as `config` says and save the adapted model directory."""
    if config.mode not in MODES:
        raise FinetuneError(f"--mode {config.mode!r}: use one of {', '.join(MODES)}")
    if config.class_weights not in CLASS_WEIGHTS:
        raise FinetuneError(f"--class-weights {config.class_weights!r}: use {CLASS_WEIGHTS}")
    if config.epochs < 1 or config.batch_size < 1 or config.context < 0:
        raise FinetuneError("--epochs and --batch-size must be >= 1, --context >= 0")
    if config.max_length < 8:
        raise FinetuneError(f"--max-length {config.max_length}: use at least 8")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    _seed_everything(config.seed)
    device = pick_device(config.device)
    base_dir = Path(config.model) if config.model else bundled_model_path()

    dataset = load_dataset(config.data, splits=(FIT_SPLIT, SELECT_SPLIT))
    out = config.out or default_out(dataset, config)
    check_model_out(out, (config.data, base_dir))
    tokenizer, encoder = load_base(base_dir, config.progress)
    separator = ""
    if config.context:
        separator = f" {tokenizer.sep_token} " if tokenizer.sep_token else " | "
        tokenizer.truncation_side = "left"  # drop the oldest context first
    train = read_utterances(dataset, FIT_SPLIT, config.context, separator)
    dev = read_utterances(dataset, SELECT_SPLIT, config.context, separator)
    num_classes = dataset.num_classes

    if config.mode == "lora":
        encoder = add_lora(encoder, config)
    elif config.mode == "frozen":
        encoder.requires_grad_(False)
    encoder.to(device)
    dim = int(encoder.config.hidden_size)
    head = torch.nn.Linear(dim, num_classes).to(device)
    scale = math.sqrt(dim)  # unit-norm embeddings -> unit-variance head inputs

    frozen_train = frozen_dev = None
    if config.mode == "frozen":  # the encoder never changes: embed once
        frozen_train = embed(encoder, tokenizer, train.inputs, config, device)
        frozen_dev = embed(encoder, tokenizer, dev.inputs, config, device)

    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    groups = [{"params": list(head.parameters()), "lr": config.head_lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train.labels) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup * total_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    weights = class_weights(train.labels, num_classes, config.class_weights)
    loss_fn = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    labels = torch.tensor(train.labels)
    lengths = [len(t) for t in train.inputs]
    generator = torch.Generator().manual_seed(config.seed)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"weighted_f1": -1.0}
    step = 0
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        tic = time.perf_counter()
        encoder.train(config.mode != "frozen")
        head.train()
        batches = length_batches(lengths, config.batch_size, generator)
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not config.progress,
        )
        total_loss, seen = 0.0, 0
        for index in bar:
            if step >= total_steps:
                break
            with _autocast(device):
                if frozen_train is not None:
                    pooled = frozen_train[index].to(device)
                else:
                    batch = [train.inputs[i] for i in index]
                    pooled = embed_batch(encoder, tokenizer, batch, config.max_length, device)
                logits = head(pooled.float() * scale)
                loss = loss_fn(logits.float(), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            total_loss += float(loss.detach()) * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        bar.close()
        train_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
        dev_pooled = (
            frozen_dev
            if frozen_dev is not None
            else embed(encoder, tokenizer, dev.inputs, config, device)
        )
        with torch.inference_mode():
            predictions = head(dev_pooled.to(device) * scale).argmax(-1).cpu().numpy()
        scores = classification_metrics(np.array(dev.labels), predictions, dataset.labels)
        entry = {
            "epoch": epoch,
            "steps": step,
            "train_loss": total_loss / max(seen, 1),
            "dev_weighted_f1": scores["weighted_f1"],
            "dev_accuracy": scores["accuracy"],
            "train_seconds": round(train_seconds, 2),
            "dev_seconds": round(time.perf_counter() - tic, 2),
        }
        history.append(entry)
        if config.progress:
            print(
                f"epoch {epoch}: train loss {entry['train_loss']:.4f}, dev weighted F1 "
                f"{scores['weighted_f1']:.4f}",
                file=sys.stderr,
            )
        if scores["weighted_f1"] > best["weighted_f1"]:
            best = {
                "weighted_f1": scores["weighted_f1"],
                "epoch": epoch,
                "encoder": {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in encoder.state_dict().items()
                    if config.mode == "full" or "lora_" in k
                },
                "head": {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()},
            }
        if step >= total_steps:
            break

    if best["encoder"]:
        encoder.load_state_dict(best["encoder"], strict=False)
    head.load_state_dict(best["head"])
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
        "steps": step,
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
    save_model(out, encoder, tokenizer, head, base_dir, record)
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


def check_model_out(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse, before training, an --out that is or holds an input or that is a folder
    we did not write."""
    for given in inputs:
        if inside(given, out):
            raise FinetuneError(f"--out {out}: is or holds the input {given}; give another")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FinetuneError(f"--out {out} exists and is not a folder; give another")
    reason = model_dir_refusal(out) if out.is_dir() else None
    if reason:
        raise FinetuneError(f"--out {out} exists and {reason}; give another, or move it away")


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


# --------------------------------------------------------------------------- command line


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m data_prep.finetune_text",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    defaults = FinetuneConfig(data=Path("."))
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="corect dataset directory with utterance texts (<split>.texts.json)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="local Hugging Face model directory to start from (default: the bundled "
        "all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="model directory to write, replaced atomically (default: "
        "runs/text_models/<name>_<task>_<mode>[_ctx<K>]_seed<S>)",
    )
    parser.add_argument("--mode", choices=MODES, default=defaults.mode, help="what trains")
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, metavar="N", help="passes over train"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        metavar="N",
        help="utterances per step",
    )
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=defaults.eval_batch_size,
        metavar="N",
        help="utterances per batch when scoring dev",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="encoder learning rate")
    parser.add_argument(
        "--head-lr", type=float, default=defaults.head_lr, help="classifier head learning rate"
    )
    parser.add_argument(
        "--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=defaults.warmup,
        metavar="F",
        help="fraction of steps with a linear warm-up (then linear decay)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=defaults.max_length,
        metavar="N",
        help="tokens per input (longer ones are truncated; with --context, the oldest first)",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=defaults.context,
        metavar="K",
        help="previous utterances (with speaker names) in each input; 0 = utterance only",
    )
    parser.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTS,
        default=defaults.class_weights,
        help="loss weights for rare classes: balanced = n/(C*count), sqrt = its square root",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of initialisation and batch order"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimizer steps (timing, smoke tests)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    lora = parser.add_argument_group("LoRA (--mode lora)")
    lora.add_argument(
        "--lora-r", type=int, default=defaults.lora_r, metavar="R", help="adapter rank"
    )
    lora.add_argument(
        "--lora-alpha", type=int, default=defaults.lora_alpha, metavar="A", help="adapter scale"
    )
    lora.add_argument(
        "--lora-dropout", type=float, default=defaults.lora_dropout, metavar="P", help="dropout"
    )
    lora.add_argument(
        "--lora-targets",
        default=None,
        metavar="A,B",
        help="module names to adapt (default: peft's choice for the architecture, e.g. "
        "query,value for BERT)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """The :class:`FinetuneConfig` that the command line `argv` describes."""
    args = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "quiet"}
    if values["lora_targets"]:
        values["lora_targets"] = [t.strip() for t in values["lora_targets"].split(",")]
    return FinetuneConfig(**values, progress=not args.quiet)


def run(argv: Sequence[str] | None = None) -> FinetuneResult:
    """Parse `argv`, fine-tune, print where the model went."""
    result = finetune(config_from_args(argv))
    record = result.record
    print(
        f"{record['mode']} fine-tuning of {record['base_model']}: best dev weighted F1 "
        f"{record['dev_weighted_f1']:.4f} (epoch {record['best_epoch']}), "
        f"{record['time']['train_seconds']:.0f} s training -> {result.out}"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
