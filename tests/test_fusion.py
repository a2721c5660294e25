"""Fusion baselines (and CORECT): shapes, training, causality, batch invariance."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corect.config import ModelConfig
from corect.data.batching import Batch, collate
from corect.data.dataset import SplitData, party_indices
from corect.models.baselines import FusionModel, build_fusion_model
from corect.models.build import build_model
from corect.models.fusion import FUSION_NAMES, GatedFusion, LateHead

DIMS = {"t": 8, "a": 6, "v": 5}
NUM_CLASSES = 4
NUM_SPEAKERS = 3
SUBSETS = ("t", "a", "v", "ta", "tv", "av", "tav")
# Every model: the fusion baselines, CORECT, and `context` over each fusion.
MODELS = (*FUSION_NAMES, "corect", *(f"context:{f}" for f in FUSION_NAMES))


def make_split(lengths: list[int], seed: int = 0) -> SplitData:
    """Random dialogues with the given lengths, 2 or 3 parties each."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    n = int(offsets[-1])
    speakers = torch.randint(0, NUM_SPEAKERS, (n,), generator=g)
    return SplitData(
        dialogue_ids=[f"d{i}" for i in range(len(lengths))],
        offsets=offsets,
        features={m: torch.randn(n, d, generator=g) for m, d in DIMS.items()},
        labels=torch.randint(0, NUM_CLASSES, (n,), generator=g),
        speakers=speakers,
        parties=party_indices(speakers, offsets),
    )


def make_config(name: str, *, causal: bool = False, dropout: float = 0.1) -> ModelConfig:
    """A tiny config; `name` is a model name or ``context:<fusion>``."""
    fusion = "early"
    if name.startswith("context:"):
        name, fusion = name.split(":")
    return ModelConfig(
        name=name,
        fusion=fusion,
        hidden_size=16,
        encoder_layers=1,
        encoder_heads=2,
        dropout=dropout,
        causal=causal,
        gnn_heads=2,
        pcm_layers=1,
        pcm_heads=2,
        pcm_self_layers=1,
        moe_experts_hidden=16,
        lowrank_rank=2,
        gate_bias_modality="a",
    )


def make_model(name: str, modalities: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    dims = {m: DIMS[m] for m in modalities}
    return build_model(make_config(name, **kwargs), dims, NUM_CLASSES, NUM_SPEAKERS)


def make_batch(split: SplitData, modalities: str, indices: list[int]) -> Batch:
    return collate(split.select_modalities(modalities), indices)


SPLIT = make_split([5, 3, 7, 4])


def train_steps(model: torch.nn.Module, batch: Batch, steps: int) -> tuple[float, float]:
    """Loss (eval mode) before and after `steps` Adam steps on `batch`."""
    loss_fn = torch.nn.CrossEntropyLoss()

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(batch), batch.labels))

    before = eval_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(batch), batch.labels)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    return before, eval_loss()


def baseline_or_context_subsets() -> list[tuple[str, str]]:
    """Every plain model on every modality subset; `context` over each fusion on a one-,
    two- and three-modality subset (the fusion itself is covered on all subsets)."""
    plain = [(n, s) for n in (*FUSION_NAMES, "corect") for s in SUBSETS]
    context = [(f"context:{f}", s) for f in FUSION_NAMES for s in ("v", "ta", "tav")]
    return plain + context


@pytest.mark.parametrize(("name", "modalities"), baseline_or_context_subsets())
def test_trains_on_every_subset(name: str, modalities: str) -> None:
    model = make_model(name, modalities)
    batch = make_batch(SPLIT, modalities, [0, 1, 2])
    model.train()
    out = model(batch)
    assert out.shape == (batch.num_utterances, NUM_CLASSES)
    train_steps(model, batch, steps=2)


@pytest.mark.parametrize("name", MODELS)
def test_loss_goes_down(name: str) -> None:
    model = make_model(name, "tav", dropout=0.0)
    batch = make_batch(SPLIT, "tav", [0, 1, 2, 3])
    before, after = train_steps(model, batch, steps=15)
    assert after < before - 0.05, (before, after)


def _perturb_after(batch: Batch, dialogue: int, position: int) -> Batch:
    """The batch with the features of `dialogue`'s utterances after `position` changed."""
    features = {}
    for m, x in batch.features.items():
        x = x.clone()
        length = int(batch.lengths[dialogue])
        x[dialogue, position + 1 : length] += 3.0 * torch.randn_like(
            x[dialogue, position + 1 : length]
        )
        features[m] = x
    return dataclasses.replace(batch, features=features)


def _rows(batch: Batch, dialogue: int) -> slice:
    start = int(batch.lengths[:dialogue].sum())
    return slice(start, start + int(batch.lengths[dialogue]))


@pytest.mark.parametrize("modalities", ["tav", "a"])
@pytest.mark.parametrize("name", MODELS)
def test_causal_ignores_the_future(name: str, modalities: str) -> None:
    model = make_model(name, modalities, causal=True).eval()
    batch = make_batch(SPLIT, modalities, [2, 0])  # dialogue 0 of the batch has 7 utterances
    i = 3
    with torch.no_grad():
        ref = model(batch)[_rows(batch, 0)]
        out = model(_perturb_after(batch, 0, i))[_rows(batch, 0)]
    torch.testing.assert_close(out[: i + 1], ref[: i + 1], atol=1e-5, rtol=0)
    # Sanity: the perturbation does change the perturbed utterances themselves.
    assert not torch.allclose(out[i + 1 :], ref[i + 1 :], atol=1e-5)


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_offline_context_sees_the_future(fusion: str) -> None:
    model = make_model(f"context:{fusion}", "tav", causal=False).eval()
    batch = make_batch(SPLIT, "tav", [2])
    i = 3
    with torch.no_grad():
        ref = model(batch)
        out = model(_perturb_after(batch, 0, i))
    assert not torch.allclose(out[: i + 1], ref[: i + 1], atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_dialogue_alone_equals_batched(name: str, causal: bool) -> None:
    model = make_model(name, "tav", causal=causal).eval()
    alone = make_batch(SPLIT, "tav", [1])  # 3 utterances
    batched = make_batch(SPLIT, "tav", [2, 1, 3])  # padded to 7
    with torch.no_grad():
        ref = model(alone)
        out = model(batched)[_rows(batched, 1)]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_build_fusion_model_names() -> None:
    dims = {m: DIMS[m] for m in "tav"}
    for name in FUSION_NAMES:
        model = build_fusion_model(make_config(name), dims, NUM_CLASSES, NUM_SPEAKERS)
        assert isinstance(model, FusionModel) and model.context is None
    model = build_fusion_model(make_config("context:gated"), dims, NUM_CLASSES, NUM_SPEAKERS)
    assert isinstance(model.fusion, GatedFusion) and model.context is not None
    with pytest.raises(ValueError, match="not a fusion baseline"):
        build_fusion_model(make_config("corect"), dims, NUM_CLASSES, NUM_SPEAKERS)


def test_gate_starts_biased_toward_the_chosen_modality() -> None:
    model = make_model("gated", "tav")  # gate_bias_modality = "a"
    x = torch.randn(5, 3, 16)
    gates = model.fusion.gates(x).mean(dim=(0, 2))
    assert int(gates.argmax()) == 1  # "a" is the second modality of "tav"
    gates = make_model("gated", "tv").fusion.gates(torch.randn(5, 2, 16))
    torch.testing.assert_close(gates.sum(1), torch.ones(5, 16))


def test_late_outputs_mixed_log_probabilities() -> None:
    config = ModelConfig(hidden_size=8, dropout=0.0)
    head = LateHead(3, 12, NUM_CLASSES, config, learned_weights=True)
    z = torch.randn(6, 12)
    out = head(z)
    probs = [h(c).log_softmax(-1) for h, c in zip(head.heads, z.chunk(3, -1), strict=True)]
    torch.testing.assert_close(out, torch.stack(probs).mean(0))
    torch.testing.assert_close(head.weights().sum(), torch.tensor(1.0))
    assert (out <= 0).all()


def test_tensor_fusion_size_and_one_modality() -> None:
    model = make_model("tensor", "tav")
    assert model.fusion.out_dim == 17**3
    assert make_model("tensor", "v").fusion.out_dim == 17


def test_reset_parameters_restores_the_gate_bias() -> None:
    fusion = make_model("gated", "tav").fusion
    fusion.reset_parameters()
    bias = fusion.gate[-1].bias.view(3, 16)
    assert torch.all(bias[1] == 1.0) and torch.all(bias[0] == 0.0)
