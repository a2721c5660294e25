"""CORECT: unimodal encoders + speaker embedding -> RT-GCN and P-CM -> classifier.

Nguyen et al., "Conversation Understanding using Relational Temporal Graph Neural
Networks with Auxiliary Cross-Modality Interaction", EMNLP 2023.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from corect.config import ModelConfig
from corect.data.batching import Batch
from corect.models.caches import window_size
from corect.models.encoders import ClassifierHead, UtteranceEncoder
from corect.models.graph import build_graph, num_relations
from corect.models.pcm import PairwiseCrossModal
from corect.models.rtgcn import RTGCN


def drop_rows(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each row of `x` ``[N, D]`` with probability p, scale the others by 1/(1-p)."""
    keep = torch.rand(x.shape[0], 1, device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class CORECT(nn.Module):
    r"""The CORECT model.

    With :math:`h_{i,m}` the encoded modality m of utterance i (speaker embedding added):

    .. math::
        g_i = \Vert_m\, \mathrm{RTGCN}(h)_{i,m}, \qquad
        p_i = \mathrm{PCM}(h)_i, \qquad
        \hat y_i = \mathrm{Head}([g_i \Vert p_i])

    Ablations: ``use_rtgcn=False`` drops g, ``use_pcm=False`` drops p (P-CM is off by
    itself with a single modality); with both off the head sees :math:`\Vert_m h_{i,m}`.
    With ``encoder_skip`` the head sees :math:`[\Vert_m h_{i,m} \Vert g_i \Vert p_i]`:
    the parts can only add to what the encoders give; ``part_dropout`` drops g or p of an
    utterance in training, so the head learns to use each alone as well as both
    (docs/parts.md).
    In causal mode the graph keeps only past and self edges (wf = 0) and every attention
    is masked to the past window, and :meth:`step` streams: one utterance in, its logits
    out, from a cache of the past window (:meth:`init_cache`).
    """

    def __init__(
        self, config: ModelConfig, dims: dict[str, int], num_classes: int, num_speakers: int
    ) -> None:
        super().__init__()
        self.modalities = "".join(dims)
        self.causal = config.causal
        self.wp = config.wp
        self.wf = 0 if config.causal else config.wf
        self.edge_types = config.edge_types
        self.encoder_skip = config.encoder_skip
        self.part_dropout = config.part_dropout
        num_mod = len(self.modalities)
        hidden = config.hidden_size
        self.encoder = UtteranceEncoder(config, dims, num_speakers)
        self.rtgcn = (
            RTGCN(hidden, num_relations(num_mod), config.gnn_heads, config.gnn_dropout)
            if config.use_rtgcn
            else None
        )
        self.pcm = (
            PairwiseCrossModal(
                self.modalities,
                hidden,
                config.pcm_layers,
                config.pcm_heads,
                config.pcm_self_layers,
                config.attention_dropout,
                causal=config.causal,
                window=config.wp,
            )
            if config.use_pcm and num_mod > 1
            else None
        )
        # The head's input: (name, width) of each block, in the order forward concatenates.
        self.head_blocks: list[tuple[str, int]] = []
        if self.encoder_skip or (self.rtgcn is None and self.pcm is None):
            self.head_blocks.append(("encoders", num_mod * hidden))
        if self.rtgcn is not None:
            self.head_blocks.append(("rtgcn", num_mod * self.rtgcn.out_dim))
        if self.pcm is not None:
            self.head_blocks.append(("pcm", self.pcm.out_dim))
        features = sum(width for _, width in self.head_blocks)
        self.head = ClassifierHead(features, hidden, num_classes, config.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits [N, classes] for the N real utterances, dialogue after dialogue."""
        hidden = self.encoder(batch)
        per_utterance = [hidden[m][batch.mask] for m in self.modalities]  # M x [N, H]
        parts = list(per_utterance) if self.encoder_skip else []
        if self.rtgcn is not None:
            edge_index, edge_type = build_graph(
                batch.lengths_cpu, len(self.modalities), self.wp, self.wf, self.edge_types
            )
            device = per_utterance[0].device
            nodes = self.rtgcn(
                torch.cat(per_utterance), edge_index.to(device), edge_type.to(device)
            )
            n = per_utterance[0].shape[0]
            parts.append(nodes.view(len(self.modalities), n, -1).transpose(0, 1).flatten(1))
        if self.pcm is not None:
            parts.append(self.pcm(hidden, batch.mask, batch.positions)[batch.mask])
        if not parts:
            parts = per_utterance
        num_parts = (self.rtgcn is not None) + (self.pcm is not None)  # the last blocks
        if self.training and self.part_dropout > 0 and num_parts:
            parts[-num_parts:] = [drop_rows(p, self.part_dropout) for p in parts[-num_parts:]]
        return self.head(torch.cat(parts, dim=-1))

    def init_cache(self) -> dict[str, Any]:
        """An empty streaming cache (a new dialogue): every part's own."""
        if not self.causal:
            raise ValueError("only a causal CORECT can stream (model.causal: true)")
        cache: dict[str, Any] = {"encoder": self.encoder.init_cache()}
        if self.rtgcn is not None:
            cache["rtgcn"] = self.rtgcn.init_cache(window_size(self.wp))
        if self.pcm is not None:
            cache["pcm"] = self.pcm.init_cache()
        return cache

    def window_graph(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph of one dialogue of `length` utterances (as :meth:`forward` builds it)."""
        return build_graph(
            torch.tensor([length]), len(self.modalities), self.wp, self.wf, self.edge_types
        )

    def step(
        self,
        features: Mapping[str, torch.Tensor],
        party: int,
        position: int,
        cache: dict[str, Any],
    ) -> torch.Tensor:
        """Logits ``[classes]`` of the next utterance of a dialogue (modality -> ``[D]``,
        its speaker's party index, its position), equal to its row of :meth:`forward`."""
        hidden = self.encoder.step(features, party, position, cache["encoder"])
        parts = [hidden[m] for m in self.modalities] if self.encoder_skip else []
        if self.rtgcn is not None:
            nodes = torch.stack([hidden[m] for m in self.modalities])  # [M, H]
            parts.append(self.rtgcn.step(nodes, cache["rtgcn"], self.window_graph).flatten())
        if self.pcm is not None:
            parts.append(self.pcm.step(hidden, position, cache["pcm"]))
        if not parts:
            parts = [hidden[m] for m in self.modalities]
        return self.head(torch.cat(parts))
