"""Attention over the utterances of a dialogue, with padding and causal masks built in.

Every attention layer of corect goes through :class:`AttentionBlock`, so the two rules
that the public CORECT code breaks hold everywhere by construction:

- padding never leaks: keys at padded positions are masked, so a dialogue's outputs do
  not depend on the other dialogues of its batch;
- in causal mode, query ``i`` sees only keys ``j`` with ``i - window <= j <= i``
  (``window = -1``: the whole past), so no output depends on a later utterance.

Causal stacks also stream: :meth:`AttentionStack.step` computes the newest position only,
from an :class:`AttentionCache` of the keys and values of the window
(:mod:`corect.models.caches`); :func:`stacked_step` steps several stacks at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from corect.models.caches import Window, window_size


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

    def init_cache(self, *, cross: bool = False) -> AttentionCache:
        """An empty streaming cache: per block, the keys and values of the window.
        `cross`: the stack will step with a context (cross-modal attention)."""
        return init_stacked_cache([self], cross=cross)

    def step(
        self, x: torch.Tensor, cache: AttentionCache, *, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The newest position only: x, context: ``[dim]`` -> ``[dim]`` (row i of
        :meth:`forward`), from `cache` (:meth:`init_cache`), which it updates."""
        context = None if context is None else context[None]
        return stacked_step(x[None], cache, context=context)[0]


@dataclass
class StackedLinear:
    """P linear layers applied at once: weight ``[P, in, out]``, bias ``[P, 1, out]``."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """h ``[P, 1, in]`` -> ``[P, 1, out]``, layer p on row p."""
        return torch.baddbmm(self.bias, h, self.weight)


@dataclass
class StackedBlock:
    """The linear layers of block k of P stacks, each LayerNorm's affine folded into the
    layer after it and the attention scale into the queries."""

    query: StackedLinear
    key_value: StackedLinear
    out: StackedLinear
    ff1: StackedLinear
    ff2: StackedLinear


@dataclass
class AttentionCache:
    """The streaming cache of P causal stacks of one shape stepped together (one stack:
    P = 1): their weights as they are now (a cache serves one dialogue of inference), and
    per block a window of keys and values ``[2, P, heads, W, d]``."""

    heads: int
    eps: float
    cross: bool  # steps with a context (cross-modal attention)
    blocks: list[StackedBlock]
    norm_weight: torch.Tensor  # the final LayerNorm's affine, [P, dim] each
    norm_bias: torch.Tensor
    windows: list[Window]


def _folded(
    norm: nn.LayerNorm, weight: torch.Tensor, bias: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Linear(LayerNorm(x))`` as ``n(x) @ W' + b'`` with n the plain normalisation:
    ``W' = (W diag(gamma))^T``, ``b' = W beta + b`` (times `scale`)."""
    w = (weight * norm.weight).t() * scale
    return w, (weight @ norm.bias + bias).unsqueeze(0) * scale


def _stacked_block(blocks: Sequence[AttentionBlock], *, cross: bool) -> StackedBlock:
    """Block k of each of P stacks, as one :class:`StackedBlock`."""
    dim = blocks[0].attention.embed_dim
    scale = (dim // blocks[0].num_heads) ** -0.5
    per_block = []
    for block in blocks:
        in_w, in_b = block.attention.in_proj_weight, block.attention.in_proj_bias
        kv_norm = block.norm_key if cross else block.norm_query
        ff1, ff2, out = block.feed_forward[0], block.feed_forward[2], block.attention.out_proj
        per_block.append(
            (
                _folded(block.norm_query, in_w[:dim], in_b[:dim], scale),
                _folded(kv_norm, in_w[dim:], in_b[dim:]),
                (out.weight.t(), out.bias.unsqueeze(0)),
                _folded(block.norm_ff, ff1.weight, ff1.bias),
                (ff2.weight.t(), ff2.bias.unsqueeze(0)),
            )
        )
    return StackedBlock(*(_stacked_linear(layer) for layer in zip(*per_block, strict=True)))


def _stacked_linear(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> StackedLinear:
    """P (weight, bias) pairs, detached, as one :class:`StackedLinear`."""
    weights = torch.stack([w.detach() for w, _ in layers])
    return StackedLinear(weights, torch.stack([b.detach() for _, b in layers]))


def init_stacked_cache(stacks: Sequence[AttentionStack], *, cross: bool = False) -> AttentionCache:
    """An empty streaming cache that steps P causal stacks of one shape together (P-CM's
    stacks, or one stack), with a context iff `cross` (:class:`AttentionCache`)."""
    if not all(s.causal for s in stacks):
        raise ValueError("only a causal attention stack can stream")
    first = stacks[0]
    return AttentionCache(
        heads=first.num_heads,
        eps=first.norm.eps,
        cross=cross,
        blocks=[
            _stacked_block([s.blocks[k] for s in stacks], cross=cross)
            for k in range(len(first.blocks))
        ],
        norm_weight=torch.stack([s.norm.weight.detach() for s in stacks]),
        norm_bias=torch.stack([s.norm.bias.detach() for s in stacks]),
        windows=[Window(window_size(first.window), dim=3) for _ in first.blocks],
    )


def stacked_step(
    x: torch.Tensor, cache: AttentionCache, *, context: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The newest position of P stacks at once (:func:`init_stacked_cache`): x, context
    ``[P, dim]`` -> ``[P, dim]``, each row as row i of its stack's
    :meth:`~AttentionStack.forward` under a causal mask (inference: no dropout). Per
    block, with batched matmuls: :math:`h = x + \mathrm{MHA}(\mathrm{LN}(x),
    \mathrm{LN}(y))` over the window's cached keys and values, then
    :math:`h + \mathrm{FFN}(\mathrm{LN}(h))`."""
    if (context is not None) != cache.cross:
        raise ValueError(
            "a cross-attention cache steps with a context, a self-attention one without"
        )
    heads, eps = cache.heads, cache.eps
    p, dim = x.shape

    def norm(h: torch.Tensor) -> torch.Tensor:  # the affine part is folded into the weights
        return nn.functional.layer_norm(h, (dim,), eps=eps).unsqueeze(1)

    for w, window in zip(cache.blocks, cache.windows, strict=True):
        query = norm(x)
        source = query if context is None else norm(context)
        q = w.query(query).view(p, heads, 1, -1)
        kv = w.key_value(source).view(p, 2, heads, -1).transpose(0, 1)
        keys, values = window.push(kv)  # [P, heads, W, d] each
        scores = torch.matmul(q, keys.transpose(-1, -2))  # [P, heads, 1, W]
        attended = torch.matmul(scores.softmax(-1), values)  # [P, heads, 1, d]
        h = x + w.out(attended.view(p, 1, dim)).view(p, dim)
        x = h + w.ff2(torch.relu(w.ff1(norm(h)))).view(p, dim)
    return nn.functional.layer_norm(x, (dim,), eps=eps) * cache.norm_weight + cache.norm_bias
