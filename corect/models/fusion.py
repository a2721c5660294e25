"""Fusion baselines: the standard ways to combine modalities, as first-class models.

Every baseline has the same skeleton, :class:`FusionModel`::

    encode (UtteranceEncoder) -> fuse per utterance [N, d] -> (DialogueContext) -> head

(:mod:`corect.models.baselines`); this module holds the fusions themselves.

The encoder is CORECT's (unimodal encoders + speaker embedding), so baselines and CORECT
differ only in how the modality vectors :math:`x_{i,1..M}` of an utterance are combined.
A fusion (one class each, below) maps the stacked modality vectors ``[N, M, H]`` of the N
real utterances to ``[N, d]``; it never looks at other utterances, so only the encoders
and the optional recurrent :class:`DialogueContext` (``model.name: context``) see the
dialogue, and both honour ``model.causal``. Every fusion works with 1, 2 or 3 modalities.

Names (``model.name``): early, late, gated, tensor, lowrank, xattn, attnpool, moe and
context (a GRU over the dialogue on top of the fusion named by ``model.fusion``).
"""

from __future__ import annotations

import torch
from torch import nn

from corect.config import ModelConfig
from corect.models.attention import AttentionStack
from corect.models.encoders import classifier_head
from corect.models.registry import FUSION_NAMES

# Not split though over 400 lines: a catalogue of short classes that read best side by side.

# Defaults for settings that have no config field (yet).
TENSOR_DIM = 16  # `tensor`: each modality is projected to this size before the outer product
XATTN_LAYERS = 1  # `xattn`: attention layers over the modality tokens
GATE_HIDDEN = 32  # `gated`: hidden size of the gate MLP


def _reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters`` on every descendant that has one."""
    for child in module.modules():
        if child is not module and hasattr(child, "reset_parameters"):
            child.reset_parameters()


class Fusion(nn.Module):
    """Base class: fuses the modality vectors of each utterance, ``[N, M, H] -> [N, out_dim]``.

    `streams` is the number of independent blocks of the output (1 for every fusion but
    :class:`LateFusion`, which keeps one block per modality until the decision); a
    :class:`DialogueContext` runs one recurrence per stream so that it never mixes them.
    """

    out_dim: int
    streams: int = 1

    def reset_parameters(self) -> None:
        _reset_children(self)

    def make_head(self, in_dim: int, num_classes: int, config: ModelConfig) -> nn.Module:
        """The classifier on top of the (contextualised) fused vector of size `in_dim`."""
        return classifier_head(in_dim, num_classes, config)


class EarlyFusion(Fusion):
    r"""Early fusion: concatenation, then an MLP.

    .. math::
        z_i = \mathrm{Dropout}(\mathrm{ReLU}(W [x_{i,1} \Vert \dots \Vert x_{i,M}] + b))
    """

    def __init__(self, num_modalities: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_modalities * dim, dim), nn.ReLU(), nn.Dropout(dropout)
        )
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, H]."""
        return self.net(x.flatten(1))


class LateHead(nn.Module):
    r"""Decision-level fusion: one classifier per modality stream, log-probabilities mixed.

    .. math::
        \log \hat p_i = \sum_m w_m \log \mathrm{softmax}(\mathrm{Head}_m(z_{i,m})),
        \qquad w = \tfrac{1}{M}\mathbf{1} \ \text{or}\ w = \mathrm{softmax}(a)

    The output is a weighted mean of log-probabilities; cross-entropy (which applies one
    more log-softmax) therefore trains the normalised geometric mixture, a product of
    experts, and ``argmax`` of the output is its prediction.
    """

    def __init__(
        self,
        streams: int,
        in_dim: int,
        num_classes: int,
        config: ModelConfig,
        *,
        learned_weights: bool,
    ) -> None:
        super().__init__()
        if in_dim % streams:
            raise ValueError(f"LateHead: in_dim={in_dim} is not divisible by {streams} streams")
        self.in_dim = in_dim  # width of z, the streams concatenated (as ClassifierHead's)
        self.streams = streams
        self.heads = nn.ModuleList(
            classifier_head(in_dim // streams, num_classes, config) for _ in range(streams)
        )
        self.weight_logits = nn.Parameter(torch.zeros(streams)) if learned_weights else None

    def reset_parameters(self) -> None:
        _reset_children(self)
        if self.weight_logits is not None:
            nn.init.zeros_(self.weight_logits)

    def weights(self) -> torch.Tensor:
        """The mixing weights w [M] (they sum to 1)."""
        if self.weight_logits is None:
            return torch.full((self.streams,), 1.0 / self.streams)
        return self.weight_logits.softmax(0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, M * d] -> mixed log-probabilities [N, classes]."""
        chunks = z.chunk(self.streams, dim=-1)
        log_probs = torch.stack(
            [head(c).log_softmax(-1) for head, c in zip(self.heads, chunks, strict=True)], dim=1
        )
        w = self.weights().to(log_probs)
        return (log_probs * w.view(1, -1, 1)).sum(1)


class LateFusion(Fusion):
    r"""Late fusion: the modalities stay separate up to one classifier each, whose
    log-probabilities are averaged (or mixed with learned softmax weights, see
    :class:`LateHead`). The fusion step itself is the identity
    :math:`z_i = [x_{i,1} \Vert \dots \Vert x_{i,M}]` with M streams."""

    def __init__(self, num_modalities: int, dim: int, *, learned_weights: bool) -> None:
        super().__init__()
        self.streams = num_modalities
        self.out_dim = num_modalities * dim
        self.learned_weights = learned_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, M * H] (M streams)."""
        return x.flatten(1)

    def make_head(self, in_dim: int, num_classes: int, config: ModelConfig) -> nn.Module:
        return LateHead(
            self.streams, in_dim, num_classes, config, learned_weights=self.learned_weights
        )


class GatedFusion(Fusion):
    r"""Gated fusion (a multi-modality GMU): per-dimension softmax gates over modalities.

    .. math::
        h_{i,m} = \tanh(W_m x_{i,m}), \qquad
        g_i = \mathrm{softmax}_m\big(\mathrm{MLP}([x_{i,1} \Vert \dots \Vert x_{i,M}]) + \beta\big),
        \qquad z_i = \mathrm{Dropout}\Big(\sum_m g_{i,m} \odot h_{i,m}\Big)

    The output bias of the gate MLP starts at :math:`\beta_m = \text{bias}` for the
    modality `bias_index` (0 elsewhere), so training starts by trusting that modality
    (``model.gate_bias_modality``, ``model.gate_bias``); ``bias_index=None`` starts
    uniform. With one modality the gate is identically 1.
    """

    def __init__(
        self,
        num_modalities: int,
        dim: int,
        dropout: float,
        *,
        bias_index: int | None,
        bias: float,
        gate_hidden: int = GATE_HIDDEN,
    ) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.dim = dim
        self.bias_index = bias_index
        self.bias = bias
        self.transform = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_modalities))
        self.gate = nn.Sequential(
            nn.Linear(num_modalities * dim, gate_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(gate_hidden, num_modalities * dim),
        )
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_children(self)
        out = self.gate[-1]
        nn.init.zeros_(out.bias)
        if self.bias_index is not None:
            with torch.no_grad():
                out.bias.view(self.num_modalities, self.dim)[self.bias_index] = self.bias

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The gates g [N, M, H] (softmax over M)."""
        return self.gate(x.flatten(1)).view(-1, self.num_modalities, self.dim).softmax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, H]."""
        h = torch.stack([torch.tanh(f(x[:, m])) for m, f in enumerate(self.transform)], dim=1)
        return self.dropout((self.gates(x) * h).sum(1))


class TensorFusion(Fusion):
    r"""Tensor fusion (TFN, Zadeh et al. 2017): the outer product of the modality vectors,
    each projected to a small size d and extended with a constant 1, so that the product
    holds every unimodal, bimodal and trimodal interaction.

    .. math::
        u_{i,m} = [\mathrm{ReLU}(W_m x_{i,m}); 1] \in \mathbb{R}^{d+1}, \qquad
        z_i = \mathrm{Dropout}(\mathrm{vec}(u_{i,1} \otimes \dots \otimes u_{i,M}))
        \in \mathbb{R}^{(d+1)^M}
    """

    def __init__(
        self, num_modalities: int, dim: int, dropout: float, *, tensor_dim: int = TENSOR_DIM
    ) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Linear(dim, tensor_dim) for _ in range(num_modalities))
        self.dropout = nn.Dropout(dropout)
        self.out_dim = (tensor_dim + 1) ** num_modalities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, (d + 1)^M]."""
        z = None
        for m, project in enumerate(self.project):
            u = torch.relu(project(x[:, m]))
            u = torch.cat([u, u.new_ones(u.shape[0], 1)], dim=-1)
            z = u if z is None else (z.unsqueeze(-1) * u.unsqueeze(1)).flatten(1)
        return self.dropout(z)


class LowRankFusion(Fusion):
    r"""Low-rank multimodal fusion (LMF, Liu et al. 2018): the tensor-fusion weight
    decomposed into rank-r modality factors, so the outer product is never built.

    .. math::
        z_i = \sum_{k=1}^{r} w_k \prod_{m=1}^{M} \big([x_{i,m}; 1]^\top W^{(k)}_m\big) + b,
        \qquad W^{(k)}_m \in \mathbb{R}^{(H+1) \times d}

    (product elementwise over the M modalities), followed by dropout.
    """

    def __init__(self, num_modalities: int, dim: int, rank: int, dropout: float) -> None:
        super().__init__()
        self.factors = nn.Parameter(torch.empty(num_modalities, rank, dim + 1, dim))
        self.rank_weights = nn.Parameter(torch.empty(rank))
        self.bias = nn.Parameter(torch.empty(dim))
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for factor in self.factors:
            nn.init.xavier_normal_(factor)
        nn.init.xavier_normal_(self.rank_weights.view(1, -1))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, H]."""
        x1 = torch.cat([x, x.new_ones(x.shape[0], x.shape[1], 1)], dim=-1)
        per_modality = torch.einsum("nmh,mrhd->nmrd", x1, self.factors)
        fused = torch.einsum("nrd,r->nd", per_modality.prod(1), self.rank_weights)
        return self.dropout(fused + self.bias)


class CrossModalAttentionFusion(Fusion):
    r"""Cross-modal attention between the modalities of one utterance: its M modality
    vectors (plus a learned modality embedding :math:`e_m`) are the tokens of a small
    transformer, and the attended tokens are concatenated.

    .. math::
        [o_{i,1}, \dots, o_{i,M}] = \mathrm{Transformer}(x_{i,1} + e_1, \dots, x_{i,M} + e_M),
        \qquad z_i = [o_{i,1} \Vert \dots \Vert o_{i,M}]

    Attention runs over modalities only, never over utterances.
    """

    def __init__(
        self, num_modalities: int, dim: int, heads: int, dropout: float, *, layers: int = 1
    ) -> None:
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.empty(num_modalities, dim))
        self.stack = AttentionStack(dim, layers, heads, dropout, causal=False)
        self.out_dim = num_modalities * dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_children(self)
        nn.init.normal_(self.modality_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, M * H]."""
        tokens = x + self.modality_embedding
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.stack(tokens, mask).flatten(1)


class AttentionPoolingFusion(Fusion):
    r"""Attention pooling over the modality vectors of an utterance.

    .. math::
        \alpha_{i,m} = \mathrm{softmax}_m\big(v^\top \tanh(W x_{i,m} + b)\big), \qquad
        z_i = \mathrm{Dropout}\Big(\sum_m \alpha_{i,m} x_{i,m}\Big)
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights alpha [N, M]."""
        return self.score(x).squeeze(-1).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, H]."""
        return self.dropout((self.weights(x).unsqueeze(-1) * x).sum(1))


class MixtureOfExpertsFusion(Fusion):
    r"""Mixture of experts: one expert per modality and one on all modalities, mixed by a
    learned softmax router that sees every modality.

    .. math::
        e_{i,m} = \mathrm{MLP}_m(x_{i,m}), \quad
        e_{i,M+1} = \mathrm{MLP}_{M+1}([x_{i,1} \Vert \dots \Vert x_{i,M}]), \quad
        r_i = \mathrm{softmax}(W_r [x_{i,1} \Vert \dots \Vert x_{i,M}]), \quad
        z_i = \sum_{k=1}^{M+1} r_{i,k}\, e_{i,k}

    with :math:`\mathrm{MLP}(x) = \mathrm{Dropout}(\mathrm{ReLU}(W x + b))` of width
    ``model.moe_experts_hidden``. Dense routing (every expert runs), no balancing loss.
    """

    def __init__(self, num_modalities: int, dim: int, expert_hidden: int, dropout: float) -> None:
        super().__init__()

        def expert(in_dim: int) -> nn.Module:
            return nn.Sequential(nn.Linear(in_dim, expert_hidden), nn.ReLU(), nn.Dropout(dropout))

        self.modality_experts = nn.ModuleList(expert(dim) for _ in range(num_modalities))
        self.fused_expert = expert(num_modalities * dim)
        self.router = nn.Linear(num_modalities * dim, num_modalities + 1)
        self.out_dim = expert_hidden

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """Router probabilities r [N, M + 1] (last = the fused expert)."""
        return self.router(x.flatten(1)).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, M, H] -> [N, moe_experts_hidden]."""
        experts = [f(x[:, m]) for m, f in enumerate(self.modality_experts)]
        experts.append(self.fused_expert(x.flatten(1)))
        return (self.routing(x).unsqueeze(-1) * torch.stack(experts, dim=1)).sum(1)


def build_fusion(name: str, modalities: str, config: ModelConfig) -> Fusion:
    """The fusion named `name` for `modalities` (letters) and encoder size hidden_size."""
    m, h, p = len(modalities), config.hidden_size, config.dropout
    if name == "early":
        return EarlyFusion(m, h, p)
    if name == "late":
        return LateFusion(m, h, learned_weights=config.late_learned_weights)
    if name == "gated":
        bias_index = modalities.find(config.gate_bias_modality)
        return GatedFusion(
            m, h, p, bias_index=bias_index if bias_index >= 0 else None, bias=config.gate_bias
        )
    if name == "tensor":
        return TensorFusion(m, h, p)
    if name == "lowrank":
        return LowRankFusion(m, h, config.lowrank_rank, p)
    if name == "xattn":
        return CrossModalAttentionFusion(m, h, config.encoder_heads, p, layers=XATTN_LAYERS)
    if name == "attnpool":
        return AttentionPoolingFusion(h, p)
    if name == "moe":
        return MixtureOfExpertsFusion(m, h, config.moe_experts_hidden, p)
    raise ValueError(f"unknown fusion {name!r}: choose one of {', '.join(FUSION_NAMES)}")


__all__ = [
    "FUSION_NAMES",
    "AttentionPoolingFusion",
    "CrossModalAttentionFusion",
    "EarlyFusion",
    "Fusion",
    "GatedFusion",
    "LateFusion",
    "LateHead",
    "LowRankFusion",
    "MixtureOfExpertsFusion",
    "TensorFusion",
    "build_fusion",
]
