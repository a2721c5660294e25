"""Streaming recognition: one utterance in, one prediction out, with bounded cost.

    recognizer = StreamingRecognizer.from_run("runs/.../corect-causal/RUN")
    recognizer.reset()  # a new dialogue
    prediction = recognizer.push("Ann", features={"a": audio, "v": visual}, text="Hi!")
    prediction.label, prediction.probabilities, prediction.index

Only causal runs stream (``model.causal: true``); an offline run is refused, since its
predictions need the utterances that come later. The outputs equal the batch causal
model's on the same dialogue (``tests/test_stream.py``).

**Many dialogues, one model.** What one dialogue needs between pushes (its cache,
speakers, position and last turns) is a :class:`DialogueState`; the recognizer holds the
model and the text encoder, shared by all of them. ``push(..., state=s)`` steps dialogue
`s` (without `state`: the recognizer's own, ``reset()`` starts it again), and
:meth:`StreamingRecognizer.encode_texts` encodes the texts of several dialogues in one
text-encoder call, as the live service does (:mod:`corect.serving`). A new state copies
one template cache whose tensors (the weights each layer folds in for a step) it shares,
so a dialogue holds only its windows: a step replaces the tensors it keeps, never
updates one in place.

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

import copy
import dataclasses
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

# Tokens per text-encoder call when streaming: texts are packed without padding (a live
# batch mixes short and long texts; TextEncoder's pack_tokens).
TEXT_PACK_TOKENS = 256

FEATURE_KEYS = {"t": "t", "a": "a", "v": "v", "text": "t", "audio": "a", "visual": "v"}


@dataclass
class Prediction:
    """The prediction for one pushed utterance (`index`: its position in the dialogue)."""

    label: str
    probabilities: dict[str, float]
    index: int
    logits: list[float] = field(default_factory=list, repr=False)


@dataclass
class DialogueState:
    """What one dialogue keeps between pushes: the model's cache, the party index of each
    speaker (by first turn), the next utterance's position, and the last turns (speaker,
    text) that a text model fine-tuned with past context reads (None: all of them)."""

    cache: Any
    parties: dict[str, int] = field(default_factory=dict)
    position: int = 0
    turns: list[tuple[str, str | None]] = field(default_factory=list)
    keep_turns: int | None = None


def _shared_tensors(cache: Any, found: dict[int, Any]) -> dict[int, Any]:
    """id -> object of every tensor (and module) in `cache`, to share in its copies."""
    if isinstance(cache, (torch.Tensor, nn.Module)):
        found[id(cache)] = cache
    elif dataclasses.is_dataclass(cache) and not isinstance(cache, type):
        for f in dataclasses.fields(cache):
            _shared_tensors(getattr(cache, f.name), found)
    elif isinstance(cache, dict):
        for value in cache.values():
            _shared_tensors(value, found)
    elif isinstance(cache, (list, tuple)):
        for value in cache:
            _shared_tensors(value, found)
    elif hasattr(cache, "__dict__") and not isinstance(cache, type):
        _shared_tensors(vars(cache), found)
    return found


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
        self._template: tuple[int, Any] | None = None  # (weights version, empty cache)
        self.stepping = callable(getattr(model, "step", None))
        self.bounded = self.stepping and config.model.wp >= 0
        encoder = getattr(model, "encoder", None)
        with_speakers = getattr(encoder, "speaker_embedding", None) is not None
        self.max_speakers: int | None = encoder.num_speakers if with_speakers else None
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

    # ------------------------------------------------------------------ dialogue state

    def new_state(self) -> DialogueState:
        """A new dialogue: no speakers, an empty cache (sharing the template's tensors)."""
        if not self.stepping:
            return DialogueState([], keep_turns=self._turns_needed())
        version = sum(t._version for t in (*self.model.parameters(), *self.model.buffers()))
        if self._template is None or self._template[0] != version:  # weights changed
            self._template = (version, self.model.init_cache())
        template = self._template[1]
        cache = copy.deepcopy(template, _shared_tensors(template, {}))
        return DialogueState(cache, keep_turns=self._turns_needed())

    def _turns_needed(self) -> int | None:
        """Past turns a state must keep for the text encoder (None: not known yet)."""
        if "t" not in self.dims:
            return 0
        return None if self._text_encoder is None else self._text_encoder.context

    def reset(self) -> None:
        """Start a new dialogue: forget every speaker and cache."""
        self.state = self.new_state()

    @property
    def cache(self) -> Any:
        """The model cache of the recognizer's own dialogue."""
        return self.state.cache

    @property
    def parties(self) -> dict[str, int]:
        return self.state.parties

    @property
    def position(self) -> int:
        return self.state.position

    @property
    def turns(self) -> list[tuple[str, str | None]]:
        return self.state.turns

    def cache_sizes(self, state: DialogueState | None = None) -> list[int]:
        """The length of every cache (each at most wp + 1 when wp >= 0)."""
        return [len(w) for w in windows((state or self.state).cache)]

    # ------------------------------------------------------------------ text

    @property
    def text_encoder(self) -> TextEncoder:
        """The run's text encoder (loaded on first use, checked against the run)."""
        if self._text_encoder is None:
            self._text_encoder = text_encoder_for_run(
                self.config,
                self.dims["t"],
                self.text_model,
                False,
                self.text_record,
                pack_tokens=TEXT_PACK_TOKENS,
            )
        return self._text_encoder

    def text_input(
        self,
        state: DialogueState,
        speaker: str,
        text: str,
        earlier: Sequence[tuple[str, str | None]] = (),
    ) -> str:
        """What the text encoder reads for a new utterance: its text, or for a model
        fine-tuned with past context, with this dialogue's last turns (the pushed ones,
        then `earlier`: turns of the same dialogue encoded but not pushed yet)."""
        encoder = self.text_encoder
        if not encoder.context:
            return text
        past = [*state.turns, *earlier]
        turns = [*past[max(0, len(past) - encoder.context) :], (speaker, text)]
        if any(t is None for _, t in turns):
            raise PredictError(
                f"utterance {state.position + len(earlier)}: the text model uses the "
                f"{encoder.context} previous utterances as context, so they must be given "
                "as text too"
            )
        inputs = encoder.dialogue_inputs([[t or "" for _, t in turns]], [[s for s, _ in turns]])
        return inputs[0][-1]

    def encode_texts(self, items: Sequence[tuple[DialogueState, str, str]]) -> list[torch.Tensor]:
        """Text features of new utterances of one or several dialogues ``(state, speaker,
        text)``, in one text-encoder call (items of one dialogue in push order)."""
        inputs: list[str] = []
        pending: dict[int, list[tuple[str, str | None]]] = {}
        for state, speaker, text in items:
            earlier = pending.setdefault(id(state), [])
            inputs.append(self.text_input(state, speaker, text, earlier))
            earlier.append((speaker, text))
        return list(torch.from_numpy(self.text_encoder.encode(inputs))) if inputs else []

    def text_features(
        self, text: str, speaker: str = "", state: DialogueState | None = None
    ) -> torch.Tensor:
        """Text features with the text encoder (the run's model, checked). A model
        fine-tuned with past context gets the same inputs: this dialogue's last turns."""
        return self.encode_texts([(state or self.state, speaker, text)])[0]

    # ------------------------------------------------------------------ pushing

    def inputs(
        self,
        features: Mapping[str, Any] | None,
        text: str | None,
        speaker: str = "",
        state: DialogueState | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features by modality letter, checked against the model's dims."""
        state = state or self.state
        given: dict[str, torch.Tensor] = {}
        for key, value in (features or {}).items():
            m = FEATURE_KEYS.get(key)
            if m is None:
                raise PredictError(f"features: unknown modality {key!r}; use t/a/v or names")
            given[m] = torch.as_tensor(np.asarray(value, dtype=np.float32)).flatten()
        if "t" in self.dims and "t" not in given and text is not None:
            given["t"] = self.text_features(text, speaker, state)
        for m, dim in self.dims.items():
            if m not in given:
                hint = " (or pass text=...)" if m == "t" else ""
                raise PredictError(f"utterance {state.position}: modality {m} is missing{hint}")
            if given[m].numel() != dim:
                raise PredictError(
                    f"utterance {state.position}: modality {m} has {given[m].numel()} "
                    f"features, the model expects {dim}"
                )
        return {m: given[m].to(self.device) for m in self.dims}

    def party(self, state: DialogueState, speaker: str) -> int:
        """The party index `speaker` has (or would get) in the dialogue; a speaker beyond
        the model's speaker slots fails clearly, before anything changes."""
        party = state.parties.get(speaker, len(state.parties))
        if self.max_speakers is not None and party >= self.max_speakers:
            raise PredictError(
                f"utterance {state.position}: speaker {speaker!r} would be speaker number "
                f"{party + 1} in this dialogue, but the model was trained for at most "
                f"{self.max_speakers} speakers"
            )
        return party

    @torch.inference_mode()
    def push(
        self,
        speaker: str,
        features: Mapping[str, Any] | None = None,
        text: str | None = None,
        *,
        state: DialogueState | None = None,
    ) -> Prediction:
        """Classify the next utterance of a dialogue (`state`, default the recognizer's
        own) from its speaker and features (modality -> vector; text may come as `text`
        when the run allows it). A failing push leaves the dialogue as it was."""
        state = state or self.state
        speaker = str(speaker)
        x = self.inputs(features, text, speaker, state)
        party = self.party(state, speaker)
        if self.stepping:
            try:
                logits = self.model.step(x, state.cache, party=party, position=state.position)
            except InputError as err:
                raise PredictError(f"utterance {state.position}: {err}") from None
        else:
            logits = self.recompute(x, party, state)
        logits = logits.float().cpu()
        probabilities = logits.softmax(-1)
        prediction = Prediction(
            self.labels[int(probabilities.argmax())],
            {c: float(p) for c, p in zip(self.labels, probabilities.tolist(), strict=True)},
            state.position,
            logits.tolist(),
        )
        state.parties.setdefault(speaker, party)
        state.position += 1
        self._keep_turn(state, speaker, text)
        return prediction

    def _keep_turn(self, state: DialogueState, speaker: str, text: str | None) -> None:
        """Remember the turn, keeping only as many as the text encoder reads."""
        if state.keep_turns is None:
            state.keep_turns = self._turns_needed()
        state.turns.append((speaker, text))
        if state.keep_turns is not None and len(state.turns) > state.keep_turns:
            del state.turns[: len(state.turns) - state.keep_turns]

    def recompute(
        self, features: dict[str, torch.Tensor], party: int, state: DialogueState | None = None
    ) -> torch.Tensor:
        """Fallback for a model without ``step``: rerun it on the whole history (kept in
        the cache); the logits of the last utterance."""
        history = (state or self.state).cache
        history.append(({m: x.cpu().numpy() for m, x in features.items()}, party))
        record = DialogueRecord(
            "stream",
            [str(p) for _, p in history],
            [-1] * len(history),
            {m: np.stack([f[m] for f, _ in history]) for m in features},
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
