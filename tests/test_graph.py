"""The vectorized graph equals a brute-force construction, edge by edge, with relations."""

from __future__ import annotations

import random

import pytest
import torch

from corect.models.graph import build_graph, cross_modal_pairs, num_relations


def brute_force(lengths, num_modalities, wp, wf, edge_types):
    """Plain loops: node i of modality m hears j in [i - wp, i + wf] of its dialogue."""
    edges = set()
    n = sum(lengths)
    start = 0
    for length in lengths:
        for i in range(length):
            for j in range(length):
                if edge_types in ("temp", "temp_multi"):
                    if (wp < 0 or j >= i - wp) and (wf < 0 or j <= i + wf):
                        kind = 0 if j < i else (1 if j == i else 2)
                        for m in range(num_modalities):
                            edges.add((m * n + start + j, m * n + start + i, 3 * m + kind))
            if edge_types in ("multi", "temp_multi"):
                for p, (a, b) in enumerate(cross_modal_pairs(num_modalities)):
                    edges.add((a * n + start + i, b * n + start + i, 3 * num_modalities + p))
        start += length
    return edges


@pytest.mark.parametrize("trial", range(40))
def test_vectorized_graph_matches_brute_force(trial):
    rng = random.Random(trial)
    lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 5))]
    m = rng.randint(1, 3)
    wp, wf = rng.choice([-1, 0, 1, 3, 11]), rng.choice([-1, 0, 1, 2, 5])
    edge_types = rng.choice(["temp", "multi", "temp_multi"])
    edge_index, edge_type = build_graph(torch.tensor(lengths), m, wp, wf, edge_types)
    got = list(zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_type.tolist(), strict=True))
    assert len(got) == len(set(got)), "duplicate edges"
    assert set(got) == brute_force(lengths, m, wp, wf, edge_types)
    assert edge_type.max() < num_relations(m) if got else True


def test_direction_and_inclusive_window():
    """Node i receives from i - wp .. i + wf: with wp = 2, wf = 0 utterance 3 hears 1, 2, 3."""
    edge_index, edge_type = build_graph(torch.tensor([6]), 1, wp=2, wf=0, edge_types="temp")
    sources = sorted(edge_index[0][edge_index[1] == 3].tolist())
    assert sources == [1, 2, 3]
    assert (edge_type[(edge_index[1] == 3) & (edge_index[0] == 3)] == 1).all()  # self
    assert (edge_type[(edge_index[1] == 3) & (edge_index[0] < 3)] == 0).all()  # past
    # wf = 5 reaches exactly 5 utterances ahead.
    edge_index, _ = build_graph(torch.tensor([10]), 1, wp=0, wf=5, edge_types="temp")
    assert sorted(edge_index[0][edge_index[1] == 2].tolist()) == [2, 3, 4, 5, 6, 7]


def test_fifteen_relations_for_three_modalities():
    assert num_relations(3) == 15
    _, edge_type = build_graph(torch.tensor([4, 5]), 3, 11, 5)
    assert set(edge_type.tolist()) == set(range(15))
