"""Streaming: pushing utterances one at a time gives the batch causal model's outputs,
with caches that stay within the past window."""

from __future__ import annotations

import json

import pytest
import torch

from corect.config import ConfigError, config_from_dict
from corect.data.batching import collate
from corect.data.dataset import DialogueRecord
from corect.inference.inputs import PredictError, split_from_records
from corect.inference.recognizer import StreamingRecognizer
from corect.models.build import build_model
from corect.models.fusion import FUSION_NAMES
from corect.stream import main
from tests.conftest import TINY_DIMS, off_scale_statistics
from tests.test_causal import train_briefly
from tests.test_predict import tiny_run

LABELS = ["x", "y", "z"]
# A multi-party dialogue: four parties, the fourth enters late.
SPEAKERS = ["Ann", "Bob", "Ann", "Cy", "Bob", "Ann", "Cy", "Bob", "Di", "Ann", "Di", "Bob"]


def recognizer(name: str, modalities: str, *, trained: bool = True, **model):
    values = {
        "name": name,
        "hidden_size": 16,
        "gnn_heads": 2,
        "encoder_layers": 2,
        "pcm_layers": 2,
        "pcm_self_layers": 2,
        "dropout": 0.1,
        "causal": True,
        "wp": 3,
        **model,
    }
    config = config_from_dict({"data": {"modalities": modalities}, "model": values})
    dims = {m: TINY_DIMS[m] for m in modalities}
    torch.manual_seed(0)
    net = build_model(config.model, dims, len(LABELS), 5, off_scale_statistics(dims))
    if trained:
        train_briefly(net, modalities)
    return StreamingRecognizer(net.eval(), config, LABELS, dims)


def dialogue(dims: dict[str, int], speakers: list[str] = SPEAKERS, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(len(speakers), d, generator=g) for m, d in dims.items()}


def batch_logits(rec: StreamingRecognizer, feats: dict, speakers: list[str]) -> torch.Tensor:
    record = DialogueRecord(
        "d", speakers, [-1] * len(speakers), {m: x.numpy() for m, x in feats.items()}
    )
    with torch.no_grad():
        return rec.model(collate(split_from_records([record], rec.dims), [0]))


def stream_logits(rec: StreamingRecognizer, feats: dict, speakers: list[str]) -> torch.Tensor:
    rec.reset()
    out = []
    for k, speaker in enumerate(speakers):
        p = rec.push(speaker, {m: x[k] for m, x in feats.items()})
        assert p.index == k and p.label == rec.labels[int(torch.tensor(p.logits).argmax())]
        out.append(p.logits)
    return torch.tensor(out)


def assert_stream_equals_batch(rec: StreamingRecognizer, speakers: list[str] = SPEAKERS) -> None:
    feats = dialogue(rec.dims, speakers)
    expected = batch_logits(rec, feats, speakers)
    torch.testing.assert_close(stream_logits(rec, feats, speakers), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wp", [3, 0, -1])
@pytest.mark.parametrize(
    ("modalities", "encoders"),
    [
        ("t", {"t": "transformer"}),
        ("t", {"t": "lstm"}),
        ("ta", {"t": "transformer", "a": "mlp"}),
        ("av", {"a": "lstm", "v": "transformer"}),
        ("tav", {"t": "transformer", "a": "mlp", "v": "mlp"}),
        ("tav", {"t": "lstm", "a": "transformer", "v": "mlp"}),
    ],
)
def test_corect_stream_equals_batch(modalities: str, encoders: dict, wp: int) -> None:
    assert_stream_equals_batch(recognizer("corect", modalities, encoders=encoders, wp=wp))


@pytest.mark.parametrize(
    "switches",
    [
        {"edge_types": "temp"},
        {"edge_types": "multi"},
        {"use_rtgcn": False},
        {"use_pcm": False},
        {"use_speaker": False},
        {"use_rtgcn": False, "use_pcm": False},
        {"encoder_skip": True, "gnn_dropout": 0.3, "input_noise": 0.5},
        {"encoder_skip": True, "use_pcm": False},
        {"classifier": "prototype"},
    ],
)
def test_corect_ablations_stream_equals_batch(switches: dict) -> None:
    assert_stream_equals_batch(recognizer("corect", "tav", **switches))


def test_untrained_and_two_party() -> None:
    rec = recognizer("corect", "tav", trained=False)
    assert_stream_equals_batch(rec, ["M", "F"] * 7)
    assert_stream_equals_batch(rec)  # reset() between dialogues: same as a fresh recognizer


@pytest.mark.parametrize(
    "spec", [*FUSION_NAMES, *(f"context:{f}" for f in ("early", "late", "xattn"))]
)
def test_baselines_stream_equals_batch(spec: str) -> None:
    name, _, fusion = spec.partition(":")
    rec = recognizer(
        name, "tav", fusion=fusion or "early", encoders={"t": "transformer", "a": "lstm"}
    )
    assert rec.bounded
    assert_stream_equals_batch(rec)


def test_caches_stay_within_the_window() -> None:
    rec = recognizer("corect", "tav", trained=False, wp=3, encoders={"t": "transformer"})
    speakers = ["A", "B", "C"] * 17  # 51 utterances
    feats = dialogue(rec.dims, speakers)
    rec.reset()
    for k, speaker in enumerate(speakers):
        rec.push(speaker, {m: x[k] for m, x in feats.items()})
    sizes = rec.cache_sizes()
    # Keys/values of the t encoder's 2 blocks, RT-GCN inputs + graph keys/values, P-CM
    # 2 blocks of the 6 cross-modal stacks (stepped together) + 2 of the 3 fuse stacks.
    assert len(sizes) == 2 + 2 + 2 + 2 and max(sizes) == 4 and rec.bounded
    unbounded = recognizer("corect", "tav", trained=False, wp=-1)
    for k, speaker in enumerate(speakers):
        unbounded.push(speaker, {m: x[k] for m, x in feats.items()})
    assert max(unbounded.cache_sizes()) == len(speakers) and not unbounded.bounded


def test_input_errors() -> None:
    rec = recognizer("corect", "ta", trained=False)
    a = torch.zeros(TINY_DIMS["a"])
    with pytest.raises(PredictError, match="modality t is missing"):
        rec.push("A", {"a": a})
    with pytest.raises(PredictError, match="modality a has 3 features"):
        rec.push("A", {"text": torch.zeros(TINY_DIMS["t"]), "audio": torch.zeros(3)})
    with pytest.raises(PredictError, match="features.text"):  # synthetic: no text encoder
        rec.push("A", {"a": a}, text="hello")
    rec.reset()
    for speaker in "ABCDE":
        rec.push(speaker, {"t": torch.zeros(TINY_DIMS["t"]), "a": a})
    with pytest.raises(PredictError, match="at most 5 speakers"):
        rec.push("F", {"t": torch.zeros(TINY_DIMS["t"]), "a": a})


def test_from_run(tmp_path) -> None:
    offline = tiny_run(tmp_path, causal=False)
    with pytest.raises(ConfigError, match="offline run"):
        StreamingRecognizer.from_run(offline)
    rec = StreamingRecognizer.from_run(tiny_run(tmp_path, causal=True))
    assert rec.labels == ["sad", "angry", "neutral", "frustrated", "happy", "excited"]
    speakers = ["A", "B", "A", "C", "B", "A"]
    feats = dialogue(rec.dims, speakers)
    logits = stream_logits(rec, feats, speakers)
    torch.testing.assert_close(logits, batch_logits(rec, feats, speakers), atol=1e-5, rtol=0)


def test_bench_cli(capsys, tmp_path) -> None:
    args = ["--bench", "--positions", "1,4", "--dialogues", "2", "--span", "2", "--set"]
    args += ["data.synthetic.dims={t: 8, a: 6, v: 5}", "model.hidden_size=16", "model.wp=2"]
    assert main([*args, "--output", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    assert "| 4 | 4 |" in out and "Median ms/utterance" in out and "wp 2" in out
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["position"] for r in rows] == [1, 4] and "recompute_p99_ms" in rows[0]
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


class Wrapped(torch.nn.Module):
    """A model the recognizer has no stepper for."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch):
        return self.inner(batch)


def test_other_models_fall_back_to_recomputing() -> None:
    rec = recognizer("corect", "ta", trained=False)
    wrapped = StreamingRecognizer(Wrapped(rec.model), rec.config, LABELS, rec.dims)
    assert not wrapped.bounded
    assert_stream_equals_batch(wrapped)


class Stepped(Wrapped):
    """Any model with init_cache and step streams through them (no type dispatch)."""

    def init_cache(self):
        return {"inner": self.inner.init_cache(), "pushes": 0}

    def step(self, features, cache, *, party, position):
        cache["pushes"] += 1
        return self.inner.step(features, cache["inner"], party=party, position=position)


def test_any_model_with_a_step_streams_through_it() -> None:
    rec = recognizer("context", "ta", trained=False, encoders={"t": "lstm", "a": "transformer"})
    stepped = StreamingRecognizer(Stepped(rec.model), rec.config, LABELS, rec.dims)
    assert stepped.bounded
    assert_stream_equals_batch(stepped)
    assert stepped.cache["pushes"] == len(SPEAKERS)


def test_every_step_has_one_shape() -> None:
    """Every causal layer and model: ``step(x, cache, *, extras)`` beside ``init_cache``
    (and a model's ``step_parts`` the same way)."""
    import importlib
    import inspect
    import pkgutil

    import corect.models

    def is_step(name: str) -> bool:  # public steps only (not a layer's private helpers)
        return name == "step" or name.startswith("step_") or name == "stacked_step"

    steps = []
    for info in pkgutil.iter_modules(corect.models.__path__):
        module = importlib.import_module(f"corect.models.{info.name}")
        for _, value in inspect.getmembers(module):
            if getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value):
                methods = [f for n, f in vars(value).items() if is_step(n)]
                assert not methods or callable(getattr(value, "init_cache", None)), value
                steps += methods
            elif inspect.isfunction(value) and is_step(value.__name__):
                steps.append(value)
    assert len(steps) >= 10
    for step in steps:
        params = list(inspect.signature(step).parameters.values())
        if params[0].name == "self":
            params = params[1:]
        assert params[1].name == "cache", step
        assert {p.kind for p in params[2:]} <= {inspect.Parameter.KEYWORD_ONLY}, step
