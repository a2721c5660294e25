"""CORECT: every modality subset and ablation runs; batching never leaks between dialogues;
the shared head's prototype classifier, in every model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corect.config import ConfigError, config_from_dict, load_config
from corect.data.batching import collate
from corect.models.build import build_model
from corect.models.encoders import PrototypeLogits
from corect.models.registry import MODEL_NAMES
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
        {"classifier": "prototype", "classifier_temperature": 0.1},
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


def test_prototype_logits_are_scaled_cosines_to_the_class_prototypes():
    torch.manual_seed(0)
    layer = PrototypeLogits(4, 3, temperature=0.2)
    u = torch.randn(5, 4)
    expected = torch.stack(
        [torch.stack([F.cosine_similarity(x, c, dim=0) for c in layer.prototypes]) for x in u]
    )
    torch.testing.assert_close(layer(u), expected / 0.2)
    assert layer(100 * u).abs().max() <= 1 / 0.2 + 1e-5  # bounded: the angle counts


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_classifies_with_prototypes(name):
    model, dims = corect_model("tav", name=name, classifier="prototype")
    heads = [m for m in model.modules() if isinstance(m, PrototypeLogits)]
    assert len(heads) == (3 if name == "late" else 1)  # late fusion: a head per modality
    split = make_split([6, 4], dims)
    logits = model(collate(split, [0, 1]))
    loss = torch.nn.functional.cross_entropy(logits, collate(split, [0, 1]).labels)
    loss.backward()
    assert all(h.prototypes.grad.abs().sum() > 0 for h in heads)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.classifier=cosine", "model.classifier='cosine': choose one of linear, prototype"),
        ("model.classifier_temperature=0", "model.classifier_temperature=0.0: must be positive"),
    ],
)
def test_classifier_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
