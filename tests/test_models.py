"""CORECT: every modality subset and ablation runs; batching never leaks between dialogues."""

from __future__ import annotations

import pytest
import torch

from corect.config import config_from_dict
from corect.data.batching import collate
from corect.models.build import build_model
from tests.conftest import TINY_DIMS, make_split

SUBSETS = ["t", "a", "v", "ta", "tv", "av", "tav"]


def corect_model(modalities: str, **model):
    values = {
        "hidden_size": 16,
        "gnn_heads": 2,
        "encoder_layers": 1,
        "pcm_layers": 1,
        "pcm_self_layers": 1,
        "dropout": 0.0,
        **model,
    }
    config = config_from_dict({"data": {"modalities": modalities}, "model": values})
    dims = {m: TINY_DIMS[m] for m in modalities}
    torch.manual_seed(0)
    return build_model(config.model, dims, 3, 4), dims


@pytest.mark.parametrize("modalities", SUBSETS)
@pytest.mark.parametrize("causal", [False, True])
def test_batched_equals_alone(modalities, causal):
    """A dialogue's logits do not depend on the other dialogues of its batch."""
    model, dims = corect_model(modalities, causal=causal)
    model.eval()
    split = make_split([5, 17, 9, 12], dims)
    alone = model(collate(split, [0]))
    batched = model(collate(split, [0, 1, 2, 3]))
    torch.testing.assert_close(batched[:5], alone, atol=1e-5, rtol=0)
    second_alone = model(collate(split, [2]))
    torch.testing.assert_close(batched[22:31], second_alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "switches",
    [
        {"use_rtgcn": False},
        {"use_pcm": False},
        {"use_speaker": False},
        {"use_rtgcn": False, "use_pcm": False, "encoders": {"t": "mlp"}},
        {"edge_types": "temp"},
        {"edge_types": "multi"},
        {"encoders": {"t": "lstm", "a": "transformer", "v": "lstm"}},
        {"wp": -1, "wf": -1},
        {"wp": 0, "wf": 0},
        {"encoder_skip": True, "gnn_dropout": 0.3, "input_noise": 0.5, "part_dropout": 0.3},
    ],
)
def test_ablations_train(switches):
    model, dims = corect_model("tav", **switches)
    split = make_split([6, 4, 9], dims)
    batch = collate(split, [0, 1, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert model(batch).shape == (19, 3)
    assert losses[-1] < losses[0] * 0.7


def test_ablation_changes_the_architecture():
    full, _ = corect_model("tav")
    no_graph, _ = corect_model("tav", use_rtgcn=False)
    no_pcm, _ = corect_model("tav", use_pcm=False)
    assert full.rtgcn is not None and full.pcm is not None
    assert no_graph.rtgcn is None and no_pcm.pcm is None
    single, _ = corect_model("t")
    assert single.pcm is None  # P-CM needs two modalities


def test_too_many_speakers_is_a_clear_error():
    model, dims = corect_model("t")
    split = make_split([12], dims, num_speakers=8)
    with pytest.raises(ValueError, match="speakers but the model"):
        model(collate(split, [0]))
