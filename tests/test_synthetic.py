"""The embedded synthetic dataset: deterministic, well-formed, and its story holds."""

from __future__ import annotations

import numpy as np

from corect.config import SyntheticConfig
from corect.data.format import load_dataset
from corect.data.synthetic import (
    LABELS,
    ensure_synthetic_dataset,
    generate,
    reference_accuracies,
    transition,
)


def test_deterministic_and_cached(tmp_path, tiny_synthetic):
    first = ensure_synthetic_dataset(tiny_synthetic, tmp_path)
    again = generate(tiny_synthetic)
    dataset = load_dataset(first)
    assert dataset.labels == LABELS and set(dataset.splits) == {"train", "dev", "test"}
    train = dataset.splits["train"]
    np.testing.assert_array_equal(
        train.features["v"].numpy(), np.concatenate([d.features["v"] for d in again["train"]])
    )
    assert ensure_synthetic_dataset(tiny_synthetic, tmp_path) == first  # cached
    other = generate(SyntheticConfig(**{**tiny_synthetic.__dict__, "seed": 1}))
    assert not np.array_equal(other["train"][0].features["t"], again["train"][0].features["t"])


def test_multi_party():
    config = SyntheticConfig(train_dialogues=30, dev_dialogues=1, test_dialogues=1, dims={"t": 4})
    parties = [len(set(d.speakers)) for d in generate(config)["train"]]
    assert max(parties) >= 3 and min(parties) >= 1


def test_transition_is_a_distribution():
    for own in range(-1, 6):
        for previous in range(-1, 6):
            p = transition(own, previous)
            assert np.isclose(p.sum(), 1.0) and (p >= 0).all()


def test_story_context_and_future_matter():
    """Bayes references: context helps a lot, the future a little (default sizes)."""
    ref = reference_accuracies(SyntheticConfig())
    assert ref["causal_oracle"] > ref["context_free"] + 0.10
    assert ref["offline_oracle"] > ref["causal_oracle"] + 0.03
