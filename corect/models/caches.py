"""Streaming: what a model's ``step`` keeps between utterances of one dialogue, and the one
shape every ``step`` has.

Every causal layer has a batch ``forward`` and, beside it, ``init_cache(...)`` (an empty
cache for a new dialogue) and a ``step`` that computes only the newest utterance's row
from that cache of rows of earlier utterances (the way Hugging Face models keep a
key/value ``Cache`` beside the forward in their modeling file)::

    step(x, cache, *, extras) -> row    # cache second, what else a layer needs keyword-only

Each layer's cache is a small dataclass beside the layer that owns it (it reads with the
``step`` that uses it): :class:`~corect.models.attention.AttentionCache`,
:class:`~corect.models.rtgcn.GraphCache`, :class:`~corect.models.pcm.PCMCache`. This
module holds what several layers share: :class:`Window` (the last rows of a layer),
:class:`RecurrentCache` (the GRU and LSTM states), and :class:`StreamingModel`, the base
of every model that streams, with its :class:`ModelCache`. :func:`windows` lists every
window of a cache, e.g. to check that none grows beyond the past window.

How a model streams with bounded cost, and the recognizer that strings the steps
together: :mod:`corect.inference.recognizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from corect.models.encoders import UtteranceEncoder


class Window:
    """The last `size` rows pushed (all of them when `size` is None), oldest first,
    stacked along dimension `dim` (the layout the layer reads them in)."""

    def __init__(self, size: int | None, dim: int = 0) -> None:
        self.size = size
        self.dim = dim
        self.rows: torch.Tensor | None = None

    def push(self, row: torch.Tensor) -> torch.Tensor:
        """Append `row`; return the window: `row`'s shape with W inserted at `dim`."""
        row = row.unsqueeze(self.dim)
        if self.rows is None:
            self.rows = row
        else:
            kept = self.rows
            if self.size is not None and len(self) >= self.size:
                kept = kept.narrow(self.dim, 1, self.size - 1)
            self.rows = torch.cat((kept, row), dim=self.dim)
        return self.rows

    def __len__(self) -> int:
        return 0 if self.rows is None else self.rows.shape[self.dim]


def window_size(wp: int) -> int | None:
    """Rows a layer with past window `wp` must keep (``wp + 1``; None = all, wp = -1)."""
    return wp + 1 if wp >= 0 else None


@dataclass
class RecurrentCache:
    """The hidden state of each stream of a recurrent layer (None before the first step)."""

    states: list[Any]

    @classmethod
    def empty(cls, streams: int = 1) -> RecurrentCache:
        return cls([None] * streams)


@dataclass
class ModelCache:
    """A model's cache of one dialogue: its utterance encoder's (modality -> that
    encoder's cache) and its parts' (everything after the encoder, the model's own)."""

    encoder: dict[str, Any]
    parts: Any


class StreamingModel(nn.Module):
    """Base of the models that stream (CORECT and the fusion baselines): the step
    skeleton they share. A model defines, beside its ``forward``:

    - ``init_parts_cache()``: the cache of its parts (everything after the encoder);
    - ``step_parts(hidden, cache, *, position)``: the newest utterance's logits from its
      encoded modalities (modality -> ``[H]``), as its row of ``forward``.
    """

    encoder: UtteranceEncoder

    def init_cache(self) -> ModelCache:
        """An empty streaming cache (a new dialogue): the encoder's, then the parts'."""
        parts = self.init_parts_cache()  # first: a model that cannot stream says so
        return ModelCache(self.encoder.init_cache(), parts)

    def step(
        self, features: Mapping[str, torch.Tensor], cache: ModelCache, *, party: int, position: int
    ) -> torch.Tensor:
        """Logits ``[classes]`` of the next utterance of a dialogue (modality -> ``[D]``,
        its speaker's party index, its position), equal to its row of ``forward``."""
        hidden = self.encoder.step(features, cache.encoder, party=party, position=position)
        return self.step_parts(hidden, cache.parts, position=position)

    def init_parts_cache(self) -> Any:
        raise NotImplementedError

    def step_parts(
        self, hidden: dict[str, torch.Tensor], cache: Any, *, position: int
    ) -> torch.Tensor:
        raise NotImplementedError


def windows(cache: Any) -> list[Window]:
    """Every :class:`Window` in a cache (dataclasses, dicts and lists, nested)."""
    if isinstance(cache, Window):
        return [cache]
    if dataclasses.is_dataclass(cache) and not isinstance(cache, type):
        return [w for f in dataclasses.fields(cache) for w in windows(getattr(cache, f.name))]
    if isinstance(cache, dict):
        return [w for value in cache.values() for w in windows(value)]
    if isinstance(cache, (list, tuple)):
        return [w for value in cache for w in windows(value)]
    return []
