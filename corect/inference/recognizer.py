"""Streaming recognition: one utterance in, one prediction out, with bounded cost.

    recognizer = StreamingRecognizer.from_run("runs/.../corect-causal/RUN")
    recognizer.reset()  # a new dialogue
    prediction = recognizer.push("Ann", features={"a": audio, "v": visual}, text="Hi!")
    prediction.label, prediction.probabilities, prediction.index

Only causal runs stream (``model.causal: true``); an offline run is refused, since its
predictions need the utterances that come later. The outputs equal the batch causal
model's on the same dialogue (``tests/test_stream.py``).

**How the cost stays bounded.** In causal mode every layer's output at utterance i
depends only on the previous layer's outputs at utterances ``[i - wp, i]`` (attention
blocks, graph layers), or on utterance i alone (MLP encoders, cross-modal edges, the
head), and past outputs never change. So every causal model has, beside its batch
``forward``, a ``step(features, cache, *, party, position)`` that computes only the new
utterance's row of each layer from a cache of the window (``init_cache()``; keys and
values of attention, graph inputs, recurrent states), each layer's in its own file
(:mod:`corect.models.caches`). The recognizer only strings the pushes together: a push
costs the same at utterance 200 as at utterance 20. With ``wp = -1`` (whole past) the
windows grow with the dialogue and so does the cost.

Models: CORECT (every encoder kind and ablation) and every fusion baseline, including
``context``, have a step. Any other model (no ``step``) falls back to recomputing the
whole history at every push (correct, but its cost grows; ``bounded`` says which).

Latency: ``python -m corect.stream --bench [--figure latency.png]`` (median and p99 ms
per utterance at several dialogue positions, against rerunning the batch model on the
whole history; the figure draws both against the position; :mod:`corect.inference.latency`).
Dialogues from a file: ``python -m corect.stream --run RUN --input dialogues.jsonl``
(:func:`stream_file`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from corect.common.errors import InputError
from corect.config import Config, ConfigError
from corect.data.batching import collate
from corect.data.dataset import DialogueRecord
from corect.engine.checkpoints import load_run
from corect.inference.inputs import PredictError, split_from_records, text_encoder_for_run
from corect.models.caches import windows

if TYPE_CHECKING:
    from corect.data.text_encoder import TextEncoder

FEATURE_KEYS = {"t": "t", "a": "a", "v": "v", "text": "t", "audio": "a", "visual": "v"}


@dataclass
class Prediction:
    """The prediction for one pushed utterance (`index`: its position in the dialogue)."""

    label: str
    probabilities: dict[str, float]
    index: int
    logits: list[float] = field(default_factory=list, repr=False)


class StreamingRecognizer:
    """Utterances of a dialogue in, one prediction each out, from a causal model.

    `model` must be in causal mode (its config's ``model.causal``). `wp` is the past window
    (-1: whole past, the cost then grows with the dialogue)."""

    def __init__(
        self,
        model: nn.Module,
        config: Config,
        labels: Sequence[str],
        dims: Mapping[str, int],
        *,
        device: str | torch.device = "cpu",
        text_model: str | Path | None = None,
        text_features: dict[str, Any] | None = None,
    ) -> None:
        if not config.model.causal:
            raise ConfigError(
                "this model is offline (model.causal: false): its predictions use later "
                "utterances, so it cannot stream. Train a causal one (python -m corect.train "
                "--set model.causal=true) or use python -m corect.predict for whole dialogues"
            )
        self.model = model.to(device).eval()
        self.config = config
        self.labels = list(labels)
        self.dims = dict(dims)
        self.device = torch.device(device)
        self.text_model = text_model
        self.text_record = text_features  # the checkpoint's record (None: older checkpoint)
        self._text_encoder: TextEncoder | None = None
        self.stepping = callable(getattr(model, "step", None))
        self.bounded = self.stepping and config.model.wp >= 0
        self.reset()

    @classmethod
    def from_run(
        cls, run_dir: str | Path, device: str = "cpu", text_model: str | Path | None = None
    ) -> StreamingRecognizer:
        """Load a causal run (refuses an offline one)."""
        config, model, checkpoint = load_run(run_dir, device)
        if not config.model.causal:
            raise ConfigError(
                f"{run_dir} is an offline run (model.causal: false): its predictions use "
                "later utterances, so it cannot stream. Train a causal run (python -m "
                "corect.train --set model.causal=true) or use python -m corect.predict"
            )
        return cls(
            model,
            config,
            checkpoint["labels"],
            checkpoint["dims"],
            device=device,
            text_model=text_model,
            text_features=checkpoint.get("text_features"),
        )

    def reset(self) -> None:
        """Start a new dialogue: forget every speaker and cache."""
        self.cache: Any = self.model.init_cache() if self.stepping else []
        self.parties: dict[str, int] = {}
        self.position = 0
        self.turns: list[tuple[str, str | None]] = []  # (speaker, text): past context

    def cache_sizes(self) -> list[int]:
        """The length of every cache (each at most wp + 1 when wp >= 0)."""
        return [len(w) for w in windows(self.cache)]

    def text_features(self, text: str, speaker: str = "") -> torch.Tensor:
        """Text features with the text encoder (the run's model, checked). A model
        fine-tuned with past context gets the same inputs: this dialogue's last turns."""
        if self._text_encoder is None:
            self._text_encoder = text_encoder_for_run(
                self.config, self.dims["t"], self.text_model, False, self.text_record
            )
        encoder = self._text_encoder
        if encoder.context:
            turns = [*self.turns[max(0, len(self.turns) - encoder.context) :], (speaker, text)]
            if any(t is None for _, t in turns):
                raise PredictError(
                    f"utterance {self.position}: the text model uses the {encoder.context} "
                    "previous utterances as context, so they must be given as text too"
                )
            inputs = encoder.dialogue_inputs([[t or "" for _, t in turns]], [[s for s, _ in turns]])
            text = inputs[0][-1]
        return torch.from_numpy(encoder.encode([text])[0])

    def inputs(
        self, features: Mapping[str, Any] | None, text: str | None, speaker: str = ""
    ) -> dict[str, torch.Tensor]:
        """Features by modality letter, checked against the model's dims."""
        given: dict[str, torch.Tensor] = {}
        for key, value in (features or {}).items():
            m = FEATURE_KEYS.get(key)
            if m is None:
                raise PredictError(f"features: unknown modality {key!r}; use t/a/v or names")
            given[m] = torch.as_tensor(np.asarray(value, dtype=np.float32)).flatten()
        if "t" in self.dims and "t" not in given and text is not None:
            given["t"] = self.text_features(text, speaker)
        for m, dim in self.dims.items():
            if m not in given:
                hint = " (or pass text=...)" if m == "t" else ""
                raise PredictError(f"utterance {self.position}: modality {m} is missing{hint}")
            if given[m].numel() != dim:
                raise PredictError(
                    f"utterance {self.position}: modality {m} has {given[m].numel()} "
                    f"features, the model expects {dim}"
                )
        return {m: given[m].to(self.device) for m in self.dims}

    @torch.inference_mode()
    def push(
        self, speaker: str, features: Mapping[str, Any] | None = None, text: str | None = None
    ) -> Prediction:
        """Classify the next utterance of the dialogue from its speaker and features
        (modality -> vector; text may come as `text` when the run allows it)."""
        x = self.inputs(features, text, str(speaker))
        party = self.parties.setdefault(str(speaker), len(self.parties))
        if self.stepping:
            try:
                logits = self.model.step(x, self.cache, party=party, position=self.position)
            except InputError as err:
                raise PredictError(f"utterance {self.position}: {err}") from None
        else:
            logits = self.recompute(x, party)
        logits = logits.float().cpu()
        probabilities = logits.softmax(-1)
        prediction = Prediction(
            self.labels[int(probabilities.argmax())],
            {c: float(p) for c, p in zip(self.labels, probabilities, strict=True)},
            self.position,
            logits.tolist(),
        )
        self.position += 1
        self.turns.append((str(speaker), text))
        return prediction

    def recompute(self, features: dict[str, torch.Tensor], party: int) -> torch.Tensor:
        """Fallback for a model without ``step``: rerun it on the whole history (kept in
        the cache); the logits of the last utterance."""
        self.cache.append(({m: x.cpu().numpy() for m, x in features.items()}, party))
        record = DialogueRecord(
            "stream",
            [str(p) for _, p in self.cache],
            [-1] * len(self.cache),
            {m: np.stack([f[m] for f, _ in self.cache]) for m in features},
        )
        batch = collate(split_from_records([record], self.dims), [0])
        return self.model(batch.to(self.device))[-1]


def stream_file(recognizer: StreamingRecognizer, path: str | Path) -> list[dict[str, Any]]:
    """Stream every dialogue of a JSONL file (format: :mod:`corect.data.jsonl`); per
    utterance the prediction and the push latency."""
    from corect.data.jsonl import read_jsonl

    results = []
    for dialogue in read_jsonl(path, recognizer.labels, require_labels=False, default_split="test"):
        recognizer.reset()
        utterances = []
        for k in range(len(dialogue)):
            start = time.perf_counter()
            p = recognizer.push(dialogue.speakers[k], dialogue.features[k], dialogue.texts[k])
            utterances.append(
                {
                    "index": p.index,
                    "speaker": dialogue.speakers[k],
                    "label": p.label,
                    "probabilities": {c: round(x, 6) for c, x in p.probabilities.items()},
                    "ms": round(1000 * (time.perf_counter() - start), 3),
                }
            )
            if dialogue.labels[k] is not None:
                utterances[-1]["true_label"] = dialogue.labels[k]
        results.append({"id": dialogue.id, "utterances": utterances})
    return results
