"""RT-GCN: the relational temporal graph layers of CORECT (PyG RGCNConv + TransformerConv)."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import RGCNConv, TransformerConv


class RTGCN(nn.Module):
    r"""Relational graph convolution followed by a graph transformer.

    .. math::
        h_i = W_0 x_i + \sum_{r} \frac{1}{|\mathcal{N}_r(i)|}
              \sum_{j \in \mathcal{N}_r(i)} W_r x_j
        \qquad
        z_i = \mathrm{LeakyReLU}\Big(\mathrm{BN}\big(\big\Vert_{k=1}^{K}
              [W^k_s h_i + \sum_{j \in \mathcal{N}(i)} \alpha^k_{ij} W^k_v h_j]\big)\Big)

    with :math:`\alpha^k_{ij} = \mathrm{softmax}_j((W^k_q h_i)^\top W^k_k h_j / \sqrt{d})`
    over the incoming edges of i, and K heads concatenated. Messages flow from
    ``edge_index[0]`` (source) to ``edge_index[1]`` (target), as built by
    :func:`corect.graph.build_graph`.
    """

    def __init__(self, hidden: int, num_relations: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.relational = RGCNConv(hidden, hidden, num_relations)
        self.transformer = TransformerConv(hidden, hidden, heads=heads, concat=True)
        self.norm = nn.BatchNorm1d(hidden * heads)
        self.activation = nn.LeakyReLU()
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
            return self.activation(self.norm(self.transformer(h, edge_index)))
