"""Causal mode really is causal: past predictions never depend on later utterances.

For each model, in eval mode, the logits of utterances 0..i of a dialogue are compared
across three edits of everything after i (changed features and speakers, removed,
more appended), with the dialogue batched next to another (padded) one. In causal mode
they must not move (atol 1e-5); in offline mode the same probe must see a change, which
shows that the probe can fail.
"""

from __future__ import annotations

import pytest
import torch

from corect.config import config_from_dict
from corect.data.batching import collate
from corect.data.dataset import SplitData, party_indices
from corect.models.build import build_model
from corect.models.fusion import FUSION_NAMES
from tests.conftest import TINY_DIMS, make_split, off_scale_statistics

NUM_CLASSES = 3
NUM_SPEAKERS = 5
LENGTH, CUT, EXTRA = 10, 4, 6  # dialogue under test: 10 utterances, past = 0..4


def build(name: str, modalities: str, *, causal: bool, **model) -> torch.nn.Module:
    values = {
        "name": name,
        "hidden_size": 16,
        "gnn_heads": 2,
        "encoder_layers": 2,
        "pcm_layers": 1,
        "pcm_self_layers": 2,
        "dropout": 0.1,
        "causal": causal,
        "wp": 2,
        "wf": 2,
        **model,
    }
    config = config_from_dict({"data": {"modalities": modalities}, "model": values})
    torch.manual_seed(0)
    dims = {m: TINY_DIMS[m] for m in modalities}
    return build_model(config.model, dims, NUM_CLASSES, NUM_SPEAKERS, off_scale_statistics(dims))


def train_briefly(model: torch.nn.Module, modalities: str, steps: int = 4) -> None:
    """A few Adam steps on random dialogues (BatchNorm statistics move too)."""
    split = make_split([7, 4, 9, 5], {m: TINY_DIMS[m] for m in modalities}, NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        batch = collate(split, [0, 1, 2, 3])
        loss = torch.nn.functional.cross_entropy(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def two_dialogue_split(features: dict[str, torch.Tensor], speakers: torch.Tensor) -> SplitData:
    """The dialogue under test followed by a fixed 7-utterance neighbour in one split."""
    g = torch.Generator().manual_seed(1)
    neighbour = 7
    lengths = torch.tensor([speakers.numel(), neighbour])
    offsets = torch.cat((torch.zeros(1, dtype=torch.long), lengths.cumsum(0)))
    all_speakers = torch.cat((speakers, torch.randint(0, 3, (neighbour,), generator=g)))
    return SplitData(
        ["probe", "neighbour"],
        offsets,
        {
            m: torch.cat((x, torch.randn(neighbour, x.shape[1], generator=g)))
            for m, x in features.items()
        },
        torch.zeros(offsets[-1].item(), dtype=torch.long),
        all_speakers,
        party_indices(all_speakers, offsets),
    )


def past_deltas(model: torch.nn.Module, modalities: str) -> dict[str, float]:
    """Max |change| of the logits of utterances 0..CUT when the future is edited."""
    g = torch.Generator().manual_seed(2)
    total = LENGTH + EXTRA
    feats = {m: torch.randn(total, TINY_DIMS[m], generator=g) for m in modalities}
    speakers = torch.tensor([0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2, 0, 1, 0, 2, 1])
    changed_feats = {
        m: torch.cat((x[: CUT + 1], torch.randn(LENGTH - CUT - 1, x.shape[1], generator=g)))
        for m, x in feats.items()
    }
    changed_speakers = speakers[:LENGTH].clone()
    changed_speakers[CUT + 1 :] = 3  # a new party enters after the cut
    variants = {
        "base": ({m: x[:LENGTH] for m, x in feats.items()}, speakers[:LENGTH]),
        "changed": (changed_feats, changed_speakers),
        "removed": ({m: x[: CUT + 1] for m, x in feats.items()}, speakers[: CUT + 1]),
        "appended": (feats, speakers),
    }
    model.eval()
    past = {}
    with torch.no_grad():
        for name, (f, s) in variants.items():
            logits = model(collate(two_dialogue_split(f, s), [0, 1]))
            past[name] = logits[: CUT + 1]
    return {k: (v - past["base"]).abs().max().item() for k, v in past.items() if k != "base"}


def assert_causal(model: torch.nn.Module, modalities: str) -> None:
    deltas = past_deltas(model, modalities)
    assert max(deltas.values()) <= 1e-5, f"future leaks into the past: {deltas}"


def assert_sees_future(model: torch.nn.Module, modalities: str) -> None:
    deltas = past_deltas(model, modalities)
    assert deltas["changed"] > 1e-4 and deltas["removed"] > 1e-4, deltas


# --- CORECT -------------------------------------------------------------------------------


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("wp", [2, -1])
@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("modalities", ["t", "ta", "tav"])
def test_corect_causal(modalities: str, kind: str, wp: int, trained: bool) -> None:
    encoders = {"t": kind, "a": "mlp", "v": kind}
    model = build("corect", modalities, causal=True, encoders=encoders, wp=wp)
    if trained:
        train_briefly(model, modalities)
    assert_causal(model, modalities)


@pytest.mark.parametrize(
    "switches",
    [
        {"edge_types": "temp"},
        {"edge_types": "multi"},
        {"use_rtgcn": False},
        {"use_pcm": False},
        {"use_speaker": False},
        {"wp": 0},
        {"wf": -1},  # ignored in causal mode
        {"encoder_skip": True, "gnn_dropout": 0.3, "input_noise": 0.5, "part_dropout": 0.3},
    ],
)
def test_corect_causal_variants(switches: dict) -> None:
    model = build("corect", "tav", causal=True, **switches)
    train_briefly(model, "tav", steps=2)
    assert_causal(model, "tav")


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("modalities", ["t", "ta", "tav"])
def test_corect_offline_sees_the_future(modalities: str, kind: str) -> None:
    """The probe is not vacuous: the offline model's past does move."""
    model = build("corect", modalities, causal=False, encoders={"t": kind, "v": kind})
    assert_sees_future(model, modalities)


def test_offline_graph_alone_sees_the_future() -> None:
    """Future graph edges alone (mlp encoders, no P-CM) are enough to be seen."""
    mlps = {"t": "mlp", "a": "mlp", "v": "mlp"}
    model = build("corect", "tav", causal=False, encoders=mlps, use_pcm=False)
    assert_sees_future(model, "tav")
    causal = build("corect", "tav", causal=True, encoders=mlps, use_pcm=False)
    assert_causal(causal, "tav")


# --- fusion baselines ---------------------------------------------------------------------

BASELINES = [*FUSION_NAMES, *(f"context:{f}" for f in ("early", "late", "gated", "xattn"))]


def build_baseline(spec: str, modalities: str, *, causal: bool, **model) -> torch.nn.Module:
    name, _, fusion = spec.partition(":")
    return build(name, modalities, causal=causal, fusion=fusion or "early", **model)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("spec", BASELINES)
def test_baselines_causal(spec: str, kind: str) -> None:
    model = build_baseline(spec, "tav", causal=True, encoders={"t": kind, "a": "mlp", "v": kind})
    train_briefly(model, "tav", steps=2)
    assert_causal(model, "tav")


@pytest.mark.parametrize("spec", BASELINES)
def test_baselines_offline_see_the_future(spec: str) -> None:
    model = build_baseline(spec, "tav", causal=False)  # t: transformer encoder
    assert_sees_future(model, "tav")


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("modalities", ["t", "tav"])
def test_context_gru_alone(modalities: str, trained: bool) -> None:
    """`context` with context-free encoders: only its GRU sees the dialogue."""
    mlps = {"t": "mlp", "a": "mlp", "v": "mlp"}
    model = build_baseline("context:early", modalities, causal=True, encoders=mlps)
    if trained:
        train_briefly(model, modalities)
    assert_causal(model, modalities)
    offline = build_baseline("context:early", modalities, causal=False, encoders=mlps)
    assert_sees_future(offline, modalities)
