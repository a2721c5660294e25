"""Every model learns from features of any scale and offset (docs/data.md, "Feature scale").

Real features come L2-normalised (std 0.05 a dimension), as openSMILE functionals (1e-3
to 1e4 in one vector) or as non-negative CNN outputs. The models standardise their
inputs with train-split statistics, so the same data at another scale and offset must
give the same model outputs and reach the same accuracy.
"""

from __future__ import annotations

import pytest
import torch

from corect.config import MODEL_NAMES, config_from_dict
from corect.data.batching import collate, iterate_batches
from corect.data.dataset import SplitData, party_indices
from corect.models.build import build_model
from corect.models.encoders import InputNormalizer

DIMS = {"t": 12, "a": 6, "v": 5}
CLASSES = 3
# (scale, offset) per experiment: tiny, unit and large features, the last two shifted.
SCALES = [(0.01, 0.0), (1.0, 0.0), (100.0, 300.0)]


def learnable_split(num_dialogues: int, seed: int) -> SplitData:
    """Dialogues whose labels follow from the utterance's own text and audio features
    (a fixed linear rule), so any model can learn them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 9, (num_dialogues,), generator=g)
    offsets = torch.cat((torch.zeros(1, dtype=torch.long), lengths.cumsum(0)))
    n = int(offsets[-1])
    features = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    rule = torch.randn(DIMS["t"] + DIMS["a"], CLASSES, generator=torch.Generator().manual_seed(7))
    labels = (torch.cat((features["t"], features["a"]), 1) @ rule).argmax(1)
    speakers = torch.randint(0, 3, (n,), generator=g)
    return SplitData(
        [f"d{i}" for i in range(num_dialogues)],
        offsets,
        features,
        labels,
        speakers,
        party_indices(speakers, offsets),
    )


def rescaled(split: SplitData, scale: float, offset: float) -> SplitData:
    features = {m: x * scale + offset for m, x in split.features.items()}
    return SplitData(**{**split.__dict__, "features": features})


def model_config(name: str, **extra):
    return config_from_dict(
        {
            "model": {
                "name": name,
                "hidden_size": 16,
                "gnn_heads": 2,
                "pcm_layers": 1,
                "pcm_self_layers": 1,
                "encoder_layers": 1,
                "dropout": 0.1,
                **extra,
            }
        }
    ).model


def fitted_model(name: str, train: SplitData, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config(name), DIMS, CLASSES, 3, train.feature_statistics())


def test_normalizer_standardises_and_keeps_missing_rows_zero():
    norm = InputNormalizer(3, clip=5.0)
    x = torch.tensor([[1.0, 100.0, 1e-3], [3.0, 300.0, 3e-3], [0.0, 0.0, 0.0]])
    assert torch.equal(norm(x), x)  # identity until fitted
    norm.set_statistics(torch.tensor([2.0, 200.0, 2e-3]), torch.tensor([1.0, 100.0, 1e-3]))
    out = norm(x)
    torch.testing.assert_close(out[:2], torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert torch.equal(out[2], torch.zeros(3))  # padding / blanked modality stays zero
    assert norm(torch.tensor([[1e9, 0.0, 0.0]])).max() == 5.0  # clipped
    state = norm.state_dict()
    assert {"mean", "std", "fitted"} <= set(state)  # travels with the checkpoint


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_outputs_do_not_depend_on_input_scale(name):
    """With statistics fitted on each version of the data, every model computes the
    same logits for features at scale 0.01, 1 and 100 (+300)."""
    base = learnable_split(6, seed=1)
    batch_dialogues = list(range(base.num_dialogues))
    outputs = []
    for scale, offset in SCALES:
        split = rescaled(base, scale, offset)
        model = fitted_model(name, split).eval()
        with torch.no_grad():
            outputs.append(model(collate(split, batch_dialogues)))
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], atol=2e-4, rtol=1e-3)


def train_accuracy(name: str, train: SplitData, test: SplitData, steps: int = 40) -> float:
    model = fitted_model(name, train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    step = 0
    while step < steps:
        for batch in iterate_batches(train, 8, shuffle=True, generator=generator):
            loss = torch.nn.functional.cross_entropy(model(batch), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(b).argmax(1) for b in iterate_batches(test, 16)])
    return float((predictions == test.labels).float().mean())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_learns_at_every_scale(name):
    """The same short training reaches the same held-out accuracy at every scale, well
    above chance (1/3)."""
    train, test = learnable_split(40, seed=2), learnable_split(12, seed=3)
    accuracies = [
        train_accuracy(name, rescaled(train, s, o), rescaled(test, s, o)) for s, o in SCALES
    ]
    assert min(accuracies) > 0.5, accuracies
    assert max(accuracies) - min(accuracies) <= 0.05, accuracies
