"""What a fine-tuning run leaves: the record of how the model was made
(``corect_finetune.json``, read back by the feature writer) and the model directory,
written atomically (a temporary sibling, then renamed)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from corect.common.files import atomic_directory
from corect.data.dataset import Dataset
from corect.data.text_model import RECORD_FILE, model_identity
from data_prep.finetuning.config import FIT_SPLIT, RUN_OPTIONS, SELECT_SPLIT, FinetuneConfig
from data_prep.finetuning.training import FitOutcome, Trainer
from data_prep.finetuning.utterances import Utterances

# sentence-transformers files copied from the base model, so the result also loads there.
_ST_FILES = ("modules.json", "config_sentence_transformers.json", "1_Pooling")


def finetune_record(
    config: FinetuneConfig,
    dataset: Dataset,
    base_dir: Path,
    *,
    train: Utterances,
    dev: Utterances,
    separator: str,
    trainer: Trainer,
    outcome: FitOutcome,
    started: datetime,
    clock: float,
) -> dict[str, Any]:
    """How the model was made: base model, data, settings, the epochs and the best one,
    the past context of its inputs, device, versions and time (`clock`: the run's
    ``time.perf_counter()`` at its start)."""
    weights = trainer.class_weights
    return {
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
        "epochs_run": len(outcome.history),
        "steps": trainer.step,
        "best_epoch": outcome.best_epoch,
        "dev_weighted_f1": outcome.best_weighted_f1,
        "history": outcome.history,
        "seed": config.seed,
        "context": {"utterances": config.context, "separator": separator, "causal": True},
        "pooling": "mean over attention mask, L2-normalised (as corect.data.text_encoder)",
        "class_weights": None
        if weights is None
        else dict(zip(dataset.labels, weights.tolist(), strict=True)),
        "settings": recorded_settings(config),
        "device": str(trainer.device),
        "mixed_precision": trainer.device.type == "cuda",
        "versions": _versions(),
        "time": {
            "started": started.isoformat(timespec="seconds"),
            "train_seconds": round(outcome.train_seconds, 2),
            "total_seconds": round(time.perf_counter() - clock, 2),
        },
    }


def recorded_settings(config: FinetuneConfig) -> dict[str, Any]:
    """The settings that shape the model, as the record keeps them (not the paths, recorded
    apart, nor :data:`RUN_OPTIONS`)."""
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in asdict(config).items()
        if k not in ("data", "out", "model", *RUN_OPTIONS)
    }


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    return versions


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
    max_length = record["settings"]["max_length"]
    # A fast tokenizer saves the truncation and padding of its last call in tokenizer.json:
    # make them training's (embed_batch's) whatever ran last (a resumed run may make no call).
    tokenizer(["."], padding=True, truncation=True, max_length=max_length)
    with atomic_directory(out, model_dir_refusal) as tmp:
        encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name in _ST_FILES:
            source = base_dir / name
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            elif source.is_file():
                shutil.copy2(source, tmp / name)
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=1) + "\n"
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
            str(tmp / "classifier_head.safetensors"),
        )
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return out
