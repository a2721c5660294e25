"""Attention over the utterances of a dialogue, with padding and causal masks built in.

Every attention layer of corect goes through :class:`AttentionBlock`, so the two rules
that the public CORECT code breaks hold everywhere by construction:

- padding never leaks: keys at padded positions are masked, so a dialogue's outputs do
  not depend on the other dialogues of its batch;
- in causal mode, query ``i`` sees only keys ``j`` with ``i - window <= j <= i``
  (``window = -1``: the whole past), so no output depends on a later utterance.

Causal stacks also stream: :meth:`AttentionStack.step` computes the newest position only,
from a cache of the keys and values of the window (:mod:`corect.models.cache`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from corect.models.cache import Window, window_size


def attention_mask(
    mask: torch.Tensor, *, causal: bool, window: int = -1, num_heads: int = 1
) -> torch.Tensor:
    """Boolean mask ``[B * num_heads, T, T]``, True where query i may NOT attend key j.

    `mask` is the ``[B, T]`` padding mask (True = real utterance). Padded query rows are
    left fully open so that no row is all-masked (their outputs are never used).
    """
    b, t = mask.shape
    blocked = ~mask.unsqueeze(1).expand(b, t, t)  # padded keys
    if causal:
        i = torch.arange(t, device=mask.device)
        offset = i.view(1, t) - i.view(t, 1)  # j - i
        time_blocked = offset > 0
        if window >= 0:
            time_blocked = time_blocked | (offset < -window)
        blocked = blocked | time_blocked.unsqueeze(0)
    blocked = blocked & mask.unsqueeze(2)  # open the rows of padded queries
    return blocked.repeat_interleave(num_heads, dim=0)


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    r"""Sinusoidal encoding of integer positions ``[B, T]`` -> ``[B, T, dim]``:
    :math:`PE_{p,2k} = \sin(p / 10000^{2k/d})`, :math:`PE_{p,2k+1} = \cos(\cdot)`.

    Positions are absolute indices in the dialogue, so a streaming model that sees only a
    window of the dialogue encodes them exactly as the batch model does."""
    half = (dim + 1) // 2
    freq = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32)
        * (-math.log(10000.0) * 2 / dim)
    )
    angle = positions.unsqueeze(-1).float() * freq
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)
    return pe[..., :dim]


class AttentionBlock(nn.Module):
    r"""Pre-norm transformer block: multi-head attention then a feed-forward layer.

    .. math::
        h = x + \mathrm{MHA}(\mathrm{LN}(x), \mathrm{LN}(y), \mathrm{LN}(y))
        \qquad
        \mathrm{out} = h + \mathrm{FFN}(\mathrm{LN}(h))

    with ``y = x`` for self-attention and ``y`` the other modality for cross-modal
    attention (queries from x, keys and values from y, as in MulT).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, ff_mult: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        # Dropout only on the two residual branches: on CPU each dropout site costs as
        # much as a matmul of the same size, and two per block regularise enough.
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.ReLU(), nn.Linear(ff_mult * dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, T, dim]; attn_mask from :func:`attention_mask`; context: [B, T, dim] or None."""
        query = self.norm_query(x)
        key = query if context is None else self.norm_key(context)
        attended, _ = self.attention(query, key, key, attn_mask=attn_mask, need_weights=False)
        h = x + self.dropout(attended)
        return h + self.dropout(self.feed_forward(self.norm_ff(h)))

    def step(
        self, x: torch.Tensor, cache: Window, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""The newest position only: x, context: ``[dim]`` -> ``[dim]``, as row i of
        :meth:`forward` under a causal mask. `cache` holds the keys and values
        (``[W, 2, dim]``) of the window's earlier positions; this position's are appended.
        """
        attention = self.attention
        dim, heads = attention.embed_dim, attention.num_heads
        query = self.norm_query(x)
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        if context is None:
            q, kv = nn.functional.linear(query, weight, bias).split((dim, 2 * dim))
        else:
            q = nn.functional.linear(query, weight[:dim], bias[:dim])
            kv = nn.functional.linear(self.norm_key(context), weight[dim:], bias[dim:])
        keys_values = cache.push(kv.view(2, heads, dim // heads))  # [W, 2, heads, d]
        scores = torch.einsum("hd,whd->hw", q.view(heads, -1), keys_values[:, 0])
        weights = (scores * (dim // heads) ** -0.5).softmax(-1)
        attended = torch.einsum("hw,whd->hd", weights, keys_values[:, 1]).reshape(dim)
        h = x + self.dropout(attention.out_proj(attended))
        return h + self.dropout(self.feed_forward(self.norm_ff(h)))


class AttentionStack(nn.Module):
    """`num_layers` :class:`AttentionBlock` s with a final LayerNorm, masks applied once."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        *,
        causal: bool,
        window: int = -1,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.window = window
        self.num_heads = num_heads
        self.blocks = nn.ModuleList(
            AttentionBlock(dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x, context: [B, T, dim]; mask: [B, T] padding mask. Returns [B, T, dim]."""
        attn_mask = attention_mask(
            mask, causal=self.causal, window=self.window, num_heads=self.num_heads
        )
        for block in self.blocks:
            x = block(x, attn_mask, context)
        return self.norm(x)

    def init_cache(self) -> list[Window]:
        """An empty streaming cache: per block, the keys and values of the window."""
        if not self.causal:
            raise ValueError("only a causal attention stack can stream")
        return [Window(window_size(self.window)) for _ in self.blocks]

    def step(
        self, x: torch.Tensor, cache: list[Window], context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The newest position only: x, context: ``[dim]`` -> ``[dim]`` (row i of
        :meth:`forward`), from `cache` (:meth:`init_cache`), which it updates."""
        for block, block_cache in zip(self.blocks, cache, strict=True):
            x = block.step(x, block_cache, context)
        return self.norm(x)
