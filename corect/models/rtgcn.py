"""RT-GCN: the relational temporal graph layers of CORECT (PyG RGCNConv + TransformerConv)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch_geometric.nn import RGCNConv, TransformerConv

from corect.models.caches import Window

# The graph of one dialogue of `length` utterances: (edge_index [2, E], edge_type [E]).
WindowGraph = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GraphWeights:
    """RT-GCN's weights concatenated for one matmul per layer: relations and root
    ``[(R + 1) H, H]``; query, key, value and skip ``[H, 4 K C]``, the query scaled by
    1/sqrt(channels)."""

    relational: torch.Tensor
    relational_bias: torch.Tensor
    attention: torch.Tensor
    attention_bias: torch.Tensor


@dataclass
class GraphCache:
    """RT-GCN's streaming cache: the layer inputs and the graph transformer's keys and
    values of the window's nodes, the weights as they are now (:class:`GraphWeights`),
    and the dense edge operators of each window length seen so far."""

    inputs: Window  # [M, W, hidden]
    keys_values: Window  # [2, M, W, K * C]
    weights: GraphWeights
    operators: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class RTGCN(nn.Module):
    r"""Relational graph convolution followed by a graph transformer.

    .. math::
        h_i = W_0 x_i + \sum_{r} \frac{1}{|\mathcal{N}_r(i)|}
              \sum_{j \in \mathcal{N}_r(i)} W_r x_j
        \qquad
        z_i = \mathrm{LeakyReLU}\Big(\mathrm{BN}\big(\big\Vert_{k=1}^{K}
              [W^k_s h_i + \sum_{j \in \mathcal{N}(i)} \alpha^k_{ij} W^k_v h_j]\big)\Big)

    with :math:`\alpha^k_{ij} = \mathrm{softmax}_j((W^k_q h_i)^\top W^k_k h_j / \sqrt{d})`
    over the incoming edges of i, and K heads concatenated (in training, `dropout` drops
    attention coefficients :math:`\alpha` and output features). Messages flow from
    ``edge_index[0]`` (source) to ``edge_index[1]`` (target), as built by
    :func:`corect.models.graph.build_graph`.
    """

    def __init__(self, hidden: int, num_relations: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.relational = RGCNConv(hidden, hidden, num_relations)
        self.transformer = TransformerConv(
            hidden, hidden, heads=heads, concat=True, dropout=dropout
        )
        self.norm = nn.BatchNorm1d(hidden * heads)
        self.activation = nn.LeakyReLU()
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden * heads

    def reset_parameters(self) -> None:
        self.relational.reset_parameters()
        self.transformer.reset_parameters()
        self.norm.reset_parameters()

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor
    ) -> torch.Tensor:
        """x: [num_nodes, hidden] -> [num_nodes, heads * hidden].

        Runs in float32 even under CUDA mixed precision: PyG's scatter aggregations and
        the per-edge softmax are not safe in half precision."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.relational(x.float(), edge_index, edge_type)
            return self.dropout(self.activation(self.norm(self.transformer(h, edge_index))))

    def init_cache(self, size: int | None) -> GraphCache:
        """An empty streaming cache for a past window of `size` utterances
        (:class:`GraphCache`), with the weights as they are now."""
        conv, att = self.relational, self.transformer
        scale = torch.ones(4 * self.out_dim)
        scale[: self.out_dim] = att.out_channels**-0.5
        lins = (att.lin_query, att.lin_key, att.lin_value, att.lin_skip)
        weights = GraphWeights(
            relational=torch.cat((conv.weight.flatten(0, 1), conv.root)).detach(),
            relational_bias=conv.bias.detach(),
            attention=(torch.cat([lin.weight for lin in lins]).t() * scale).detach(),
            attention_bias=(torch.cat([lin.bias for lin in lins]) * scale).detach(),
        )
        return GraphCache(Window(size, dim=1), Window(size, dim=2), weights)

    def step(self, x: torch.Tensor, cache: GraphCache, *, graph: WindowGraph) -> torch.Tensor:
        """The newest utterance's nodes only: x ``[M, hidden]`` (one node per modality) ->
        ``[M, heads * hidden]``, as their rows of :meth:`forward` on the window.

        `graph(W)` is the graph of a dialogue of W utterances (node ``m * W + n``); only
        the edges into the last utterance are used, as dense per-relation mean and edge
        count matrices (kept in the cache per window length). Float32, as forward."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            inputs = cache.inputs.push(x)  # [M, W, hidden]
            length, num_mod = inputs.shape[1], x.shape[0]
            if length not in cache.operators:
                cache.operators[length] = self._operators(graph(length), length, num_mod)
            mean, log_count = (op.to(x.device) for op in cache.operators[length])
            nodes = inputs.reshape(num_mod * length, -1)  # node m*W + n
            h = self._relational_step(x, nodes, mean, cache.weights)
            return self.activation(self.norm(self._transformer_step(h, cache, log_count)))

    def _relational_step(
        self, x: torch.Tensor, nodes: torch.Tensor, mean: torch.Tensor, weights: GraphWeights
    ) -> torch.Tensor:
        """RGCNConv for the new nodes: per-relation mean of the sources, and the root."""
        aggregated = (mean.flatten(0, 1) @ nodes).view(x.shape[0], -1)  # [M, R * hidden]
        inputs = torch.cat((aggregated, x), dim=1)
        return torch.addmm(weights.relational_bias, inputs, weights.relational)

    def _transformer_step(
        self, h: torch.Tensor, cache: GraphCache, log_count: torch.Tensor
    ) -> torch.Tensor:
        """TransformerConv for the new nodes: softmax over their incoming edges (an
        edge counted as often as it occurs) of the window's cached keys and values."""
        weights, num_mod = cache.weights, h.shape[0]
        heads, channels = self.transformer.heads, self.transformer.out_channels
        projected = torch.addmm(weights.attention_bias, h, weights.attention)
        query, key, value, skip = projected.split(heads * channels, dim=1)
        window = cache.keys_values.push(torch.stack((key, value)))  # [2, M, W, K * C]
        keys, values = (
            window[k].reshape(-1, heads, channels).transpose(0, 1) for k in (0, 1)
        )  # [K, M * W, C], node m*W + n
        query = query.view(num_mod, heads, channels).transpose(0, 1)  # [K, M, C]
        scores = torch.bmm(query, keys.transpose(1, 2))  # [K, M, M * W]
        alpha = (scores + log_count).softmax(-1)
        out = torch.bmm(alpha, values).transpose(0, 1)  # [M, K, C]
        return out.reshape(num_mod, heads * channels) + skip

    def _operators(
        self, edges: tuple[torch.Tensor, torch.Tensor], length: int, num_mod: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For the last utterance's nodes of a `length`-utterance graph: the mean
        aggregation ``[M, R, M * length]`` per relation, and the log edge count
        ``[M, M * length]`` (-inf: no edge) of the graph transformer's softmax."""
        edge_index, edge_type = edges
        into_last = edge_index[1] % length == length - 1
        source, target = edge_index[0, into_last], edge_index[1, into_last] // length
        relation = edge_type[into_last]
        count = torch.zeros(num_mod, self.relational.num_relations, num_mod * length)
        count.index_put_((target, relation, source), torch.ones(len(source)), accumulate=True)
        mean = count / count.sum(-1, keepdim=True).clamp(min=1)
        return mean, count.sum(1).log()
