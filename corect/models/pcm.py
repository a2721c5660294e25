"""P-CM: CORECT's pairwise cross-modal attention over the dialogue."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from corect.models.attention import (
    AttentionCache,
    AttentionStack,
    init_stacked_cache,
    sinusoidal_positions,
    stacked_step,
)


@dataclass
class PCMCache:
    """P-CM's streaming cache: the M(M-1) cross-modal stacks stepped together and the M
    fuse stacks together (:class:`~corect.models.attention.AttentionCache` each)."""

    pairs: torch.Tensor  # [2, M(M-1)]: query and key modality of each cross-modal stack
    cross: AttentionCache
    fuse: AttentionCache


class PairwiseCrossModal(nn.Module):
    r"""For every ordered modality pair (j, k), a cross-modal transformer with queries from
    j and keys/values from k (MulT); for each j, the outputs from the other modalities are
    concatenated and passed through a self-attention transformer:

    .. math::
        c_{j \leftarrow k} = \mathrm{CM}_{jk}(h_j, h_k), \qquad
        o_j = \mathrm{SA}_j\big(\Vert_{k \ne j}\, c_{j \leftarrow k}\big), \qquad
        \mathrm{out} = \Vert_j\, o_j \in \mathbb{R}^{M(M-1)H}

    Every attention is masked for padding and, in causal mode, to the past window.
    Needs at least two modalities.
    """

    def __init__(
        self,
        modalities: str,
        hidden: int,
        layers: int,
        heads: int,
        self_layers: int,
        dropout: float,
        *,
        causal: bool,
        window: int,
    ) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError("P-CM needs at least two modalities")
        self.modalities = modalities
        self.hidden = hidden
        others = len(modalities) - 1
        self.cross = nn.ModuleDict(
            {
                f"{j}{k}": AttentionStack(
                    hidden, layers, heads, dropout, causal=causal, window=window
                )
                for j in modalities
                for k in modalities
                if j != k
            }
        )
        self.fuse = nn.ModuleDict(
            {
                j: AttentionStack(
                    others * hidden, self_layers, heads, dropout, causal=causal, window=window
                )
                for j in modalities
            }
        )
        self.out_dim = len(modalities) * others * hidden

    def forward(
        self, hidden: dict[str, torch.Tensor], mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """hidden: modality -> [B, T, H]; returns [B, T, M(M-1)H]."""
        pe = sinusoidal_positions(positions, self.hidden)
        h = {m: hidden[m] + pe for m in self.modalities}
        outputs = []
        for j in self.modalities:
            crossed = [self.cross[f"{j}{k}"](h[j], mask, h[k]) for k in self.modalities if k != j]
            outputs.append(self.fuse[j](torch.cat(crossed, dim=-1), mask))
        return torch.cat(outputs, dim=-1)

    def init_cache(self) -> PCMCache:
        """An empty streaming cache: the cross-modal stacks stepped together (ordered pair
        by pair, j then k), and the fuse stacks together."""
        pairs = [(j, k) for j in range(len(self.modalities)) for k in self.other_indices(j)]
        mods = self.modalities
        return PCMCache(
            pairs=torch.tensor(pairs).t(),
            cross=init_stacked_cache([self.cross[mods[j] + mods[k]] for j, k in pairs], cross=True),
            fuse=init_stacked_cache([self.fuse[j] for j in mods]),
        )

    def other_indices(self, j: int) -> list[int]:
        return [k for k in range(len(self.modalities)) if k != j]

    def step(
        self, hidden: dict[str, torch.Tensor], cache: PCMCache, *, position: int
    ) -> torch.Tensor:
        """The newest utterance only: modality -> ``[H]`` at `position` -> ``[M(M-1)H]``,
        its row of :meth:`forward` (causal only; every pair's and every modality's
        stack stepped at once)."""
        h = torch.stack([hidden[m] for m in self.modalities])  # [M, H]
        h = h + sinusoidal_positions(torch.tensor(position, device=h.device), self.hidden)
        query, key = cache.pairs.to(h.device)
        crossed = stacked_step(h[query], cache.cross, context=h[key])  # [M(M-1), H]
        fused = stacked_step(crossed.view(len(self.modalities), -1), cache.fuse)
        return fused.flatten()
