"""New dialogues for a trained run: text features with the run's text encoder, an
in-memory split with the run's modalities (sizes checked), and the speaker-count check.
Shared by ``corect.predict`` (batch) and ``corect.stream`` (one utterance at a time)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from corect.common.errors import InputError
from corect.config import Config
from corect.data.dataset import DialogueRecord, SplitData, party_indices

if TYPE_CHECKING:
    from corect.data.text_encoder import TextEncoder


class PredictError(InputError):
    """The input does not fit the run (missing modality, wrong size, unknown text model)."""


def dataset_text_features(config: Config) -> dict[str, Any] | None:
    """What the run's dataset manifest says about its text features (``text_features``,
    written by the converters), or None when it says nothing or cannot be read."""
    if not config.data.path:
        return None
    manifest = Path(config.data.path) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("text_features")
    except (OSError, ValueError, AttributeError):
        return None


def text_encoder_for_run(
    config: Config,
    dim: int,
    text_model: str | Path | None = None,
    cache: bool = True,
    recorded: dict[str, Any] | None = None,
    pack_tokens: int | None = None,
) -> TextEncoder:
    """The text encoder with the model the run's text features were made with.

    `recorded`: the checkpoint's record of them (``{}``: not made by our encoder; None,
    for checkpoints of older versions: read the run's dataset manifest instead).
    `text_model` overrides the model directory (needed when the run's dataset is not on
    this machine); `pack_tokens`: see :class:`~corect.data.text_encoder.TextEncoder`.
    Fails with :class:`PredictError` when the run's text features did not come from this
    encoder, or the model differs from the recorded one."""
    from corect.data.text_encoder import DEFAULT_CACHE_DIR, TextEncoder

    info = recorded if recorded is not None else dataset_text_features(config)
    if not info and text_model is None:
        where = config.data.path or "the embedded synthetic dataset"
        raise PredictError(
            f"the run was trained on {where}, whose text features were not made by "
            "corect's text encoder (its manifest has no 'text_features'), so texts cannot "
            "be encoded the same way: give features.text for every utterance (or "
            "--text-model DIR if you know the model)"
        )
    model_dir = text_model or (info or {}).get("model")
    if model_dir is not None and not Path(model_dir).is_dir():
        model_dir = None  # recorded on another machine: fall back to the bundled model
    encoder = TextEncoder(
        model_dir,
        cache_dir=DEFAULT_CACHE_DIR if cache else None,
        progress=False,
        layers=(info or {}).get("layers"),
        pack_tokens=pack_tokens,
    )
    if info and info.get("identity") not in (None, encoder.identity):
        raise PredictError(
            f"text model {encoder.model_dir} (identity {encoder.identity}) is not the one the "
            f"run's text features were made with ({info.get('model')}, identity "
            f"{info.get('identity')}); pass that model with --text-model"
        )
    if encoder.dim != dim:
        raise PredictError(f"text model gives {encoder.dim}-d features, the run expects {dim}")
    return encoder


def split_from_records(records: Sequence[DialogueRecord], dims: dict[str, int]) -> SplitData:
    """An in-memory split of `records` with the modalities of `dims` (sizes checked).
    Speakers become per-dialogue party ids in order of first appearance, as when loading."""
    features = {}
    for m, dim in dims.items():
        for r in records:
            shape = np.shape(r.features.get(m, ()))
            if m not in r.features or shape != (len(r.speakers), dim):
                got = f"shape {shape}" if m in r.features else "nothing"
                raise PredictError(
                    f"dialogue {r.id!r}: modality {m} needs [{len(r.speakers)}, {dim}] "
                    f"features, got {got}"
                )
        features[m] = torch.from_numpy(
            np.concatenate([np.asarray(r.features[m], dtype=np.float32) for r in records])
        )
    lengths = torch.tensor([len(r.speakers) for r in records])
    offsets = torch.cat((torch.zeros(1, dtype=torch.long), lengths.cumsum(0)))
    names: dict[str, int] = {}
    speakers = torch.tensor([names.setdefault(s, len(names)) for r in records for s in r.speakers])
    return SplitData(
        [r.id for r in records],
        offsets,
        features,
        torch.tensor([label for r in records for label in r.labels], dtype=torch.long),
        speakers,
        party_indices(speakers, offsets),
        [r.texts or [] for r in records],
    )


def check_speakers(split: SplitData, num_speakers: int, use_speaker: bool) -> None:
    """A dialogue with more parties than the model has speaker slots fails clearly."""
    if not use_speaker or split.num_utterances == 0:
        return
    for d in range(split.num_dialogues):
        parties = int(split.parties[split.offsets[d] : split.offsets[d + 1]].max()) + 1
        if parties > num_speakers:
            raise PredictError(
                f"dialogue {split.dialogue_ids[d]!r} has {parties} speakers; the model was "
                f"trained for at most {num_speakers}"
            )
