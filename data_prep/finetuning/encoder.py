"""The encoder a fine-tuning run adapts: the base model loaded from its local directory,
its tokenizer set for past context, LoRA adapters or frozen weights as the mode says, and
the embedding of many inputs (the feature writer's pooling, longest inputs first)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from corect.common.runtime import autocast
from corect.data.text_model import embed_batch, load_pretrained
from data_prep.finetuning.config import FinetuneConfig, FinetuneError


def load_base(model_dir: Path, progress: bool = True) -> tuple[Any, Any]:
    """(tokenizer, encoder) of a local model directory; nothing is downloaded."""
    if not (model_dir / "config.json").is_file():
        raise FinetuneError(
            f"{model_dir}: not a local Hugging Face model directory (config.json missing)"
        )
    try:
        return load_pretrained(model_dir, progress)
    except (OSError, ValueError) as err:
        raise FinetuneError(f"{model_dir}: cannot load the model: {err}") from err


def context_separator(tokenizer: Any, context: int) -> str:
    """What joins the past utterances of an input ('' without context: none are joined):
    the tokenizer's separator token, else ' | '. With context the tokenizer truncates on
    the left, dropping the oldest context first."""
    if not context:
        return ""
    tokenizer.truncation_side = "left"
    return f" {tokenizer.sep_token} " if tokenizer.sep_token else " | "


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


def prepare_encoder(encoder: Any, config: FinetuneConfig, device: torch.device) -> Any:
    """The encoder as `config.mode` trains it (full: as it is; lora: with adapters;
    frozen: no gradients), on `device`."""
    if config.mode == "lora":
        encoder = add_lora(encoder, config)
    elif config.mode == "frozen":
        encoder.requires_grad_(False)
    encoder.to(device)
    return encoder


def embed(
    encoder: Any, tokenizer: Any, inputs: Sequence[str], config: FinetuneConfig, device: Any
) -> torch.Tensor:
    """Sentence embeddings of `inputs` in eval mode, longest first, as float32 on CPU."""
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    out = torch.zeros(len(inputs), encoder.config.hidden_size)
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(order), config.eval_batch_size):
            index = order[start : start + config.eval_batch_size]
            batch = [inputs[i] for i in index]
            out[index] = (
                embed_batch(encoder, tokenizer, batch, config.max_length, device).float().cpu()
            )
    encoder.train(was_training)
    return out
