"""Streaming caches: what a model's ``step`` keeps between utterances of one dialogue.

Every causal layer has a batch ``forward`` and, beside it, a ``step`` that computes only
the newest utterance's row from a cache of rows of earlier utterances (the way Hugging
Face models keep a key/value cache in their modeling file). A model's ``init_cache()``
returns its cache: nested dicts and lists of :class:`Window` (the last rows of a layer)
and recurrent states. :func:`windows` lists every window of a cache, e.g. to check that
none grows beyond the past window.
"""

from __future__ import annotations

from typing import Any

import torch


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


def windows(cache: Any) -> list[Window]:
    """Every :class:`Window` in a cache (nested dicts and lists)."""
    if isinstance(cache, Window):
        return [cache]
    if isinstance(cache, dict):
        return [w for value in cache.values() for w in windows(value)]
    if isinstance(cache, (list, tuple)):
        return [w for value in cache for w in windows(value)]
    return []
