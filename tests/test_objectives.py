"""train.loss: label smoothing, supervised contrastive and prototype terms (math, every
model, validation, resuming; docs/objectives.md)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from corect.config import ConfigError, load_config
from corect.data.batching import iterate_batches
from corect.engine.checkpoints import load_data, model_for
from corect.engine.objectives import ContrastMemory, Objective, Prototypes, supcon_loss
from corect.engine.scoring import evaluate_run
from corect.engine.training import build_loss, build_optimizer, train, train_step
from corect.models.registry import MODEL_NAMES
from tests.conftest import tiny_config
from tests.test_resume import assert_same_run, run_dir_of, stop_at


def supcon_by_hand(
    z: torch.Tensor,
    y: torch.Tensor,
    tau: float,
    memory: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Khosla et al.'s L_out, one anchor and one positive at a time; the memory's unit
    vectors join every anchor's contrast set."""
    unit = F.normalize(z, dim=-1)
    keys = [unit[k] for k in range(len(y))] + ([] if memory is None else list(memory[0]))
    key_labels = list(y) + ([] if memory is None else list(memory[1]))
    terms = []
    for i in range(len(y)):
        contrast = [k for k in range(len(keys)) if k != i]
        positives = [p for p in contrast if key_labels[p] == y[i]]
        if not positives:
            continue
        others = torch.stack([unit[i] @ keys[a] / tau for a in contrast])
        denominator = others.exp().sum().log()
        terms.append(
            -sum((unit[i] @ keys[p] / tau) - denominator for p in positives) / len(positives)
        )
    return torch.stack(terms).mean()


def test_supcon_is_the_published_formula_and_skips_anchors_without_positives():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(9, 5, generator=g), torch.tensor([0, 1, 0, 2, 1, 1, 0, 3, 2])  # 3 alone
    torch.testing.assert_close(supcon_loss(z, y, 0.3), supcon_by_hand(z, y, 0.3))
    lonely = torch.randn(4, 5, requires_grad=True)
    loss = supcon_loss(lonely, torch.arange(4), 0.1)  # no class twice: no anchor
    loss.backward()
    assert loss.item() == 0 and torch.equal(lonely.grad, torch.zeros(4, 5))


def test_the_contrastive_memory_adds_earlier_positives_and_negatives_first_in_first_out():
    torch.manual_seed(0)
    memory = ContrastMemory(size=5, dim=4)
    assert memory.contents()[0].shape == (0, 4)
    first = F.normalize(torch.randn(3, 4), dim=-1)
    memory.push(first, torch.tensor([0, 1, 2]))
    second = F.normalize(torch.randn(4, 4), dim=-1)
    memory.push(second, torch.tensor([3, 3, 4, 4]))  # overwrites the two oldest
    keys, labels = memory.contents()
    assert sorted(labels.tolist()) == [2, 3, 3, 4, 4]
    assert any(torch.equal(k, first[2]) for k in keys) and int(memory.pointer) == 2
    z, y = torch.randn(4, 4), torch.tensor([0, 3, 4, 5])  # alone in the batch, all of them
    assert supcon_loss(z, y, 0.1).item() == 0.0
    with_memory = supcon_loss(z, y, 0.1, (keys, labels))
    torch.testing.assert_close(with_memory, supcon_by_hand(z, y, 0.1, (keys, labels)))
    assert with_memory.item() > 0  # classes 3 and 4 now have positives in the memory


def test_running_prototypes_are_moving_class_means_and_mask_unseen_classes():
    prototypes = Prototypes("running", 3, 2, momentum=0.75)
    first = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    logits = prototypes(first, torch.tensor([0, 0, 1]), 0.5)
    assert torch.equal(prototypes.centres, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert logits[:, 2].eq(float("-inf")).all() and logits[0, 0] == 2.0  # cos 1 / 0.5
    prototypes(torch.tensor([[0.0, 5.0]]), torch.tensor([0]), 0.5)
    assert torch.allclose(prototypes.centres[0], torch.tensor([0.75, 0.25]))
    assert prototypes.seen.tolist() == [True, True, False]
    learned = Prototypes("learned", 3, 2, momentum=0.9)
    assert [name for name, _ in learned.named_parameters()] == ["centres"]


def test_everything_off_is_the_plain_cross_entropy_and_draws_nothing(tmp_path):
    config = tiny_config(tmp_path, train={"loss": {"label_smoothing": 0.2}})
    dataset = load_data(config)
    loss = build_loss(config, dataset, torch.device("cpu"), model_for(config, dataset))
    assert type(loss) is nn.CrossEntropyLoss and loss.label_smoothing == 0.2
    default = load_config(None).train
    assert default.loss.supcon_weight == 0 and default.loss.prototype == "off"
    assert default.loss.label_smoothing == 0 and default.distill.teacher_run == ""
    on = tiny_config(tmp_path, train={"loss": {"prototype": "learned", "supcon_weight": 0.1}})
    model = model_for(on, dataset)
    before = torch.get_rng_state()
    build_loss(on, dataset, torch.device("cpu"), model)
    assert torch.equal(before, torch.get_rng_state())  # the model's dropout draws stay


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.loss.label_smoothing=1", "train.loss.label_smoothing=1.0: must be in"),
        ("train.loss.representation=cls", "train.loss.representation='cls'"),
        ("train.loss.prototype=ema", "train.loss.prototype='ema'"),
        ("train.loss.supcon_temperature=0", "train.loss.supcon_temperature=0.0: must be pos"),
        ("train.loss.prototype_momentum=1", "train.loss.prototype_momentum=1.0"),
        ("train.loss.supcon_weight=-1", "train.loss.supcon_weight=-1.0"),
        ("train.loss.supcon_memory=-1", "train.loss.supcon_memory=-1: must be >= 0"),
        ("train.loss.margin=1", "unknown key.*train.loss.margin"),
    ],
)
def test_config_errors_name_the_loss_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_with_the_objectives(tmp_path, name):
    representation = "encoder" if name in ("gated", "moe", "context") else "head"
    loss = {"supcon_weight": 0.5, "prototype": "learned", "representation": representation}
    config = tiny_config(tmp_path, model={"name": name}, train={"loss": loss})
    dataset = load_data(config)
    torch.manual_seed(0)
    model = model_for(config, dataset)
    objective = build_loss(config, dataset, torch.device("cpu"), model)
    assert isinstance(objective, Objective)
    optimizer = build_optimizer(config, model, objective.parameters())
    assert any(p is objective.prototypes.centres for p in optimizer.param_groups[0]["params"])
    batch = next(iterate_batches(dataset.splits["train"], 4))
    batch.labels[:3] = -1  # unlabelled utterances take no part
    model.train()
    generator = torch.Generator().manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cpu = torch.device("cpu")
    step = train_step(model, batch, config, optimizer, scaler, objective, generator, cpu)
    loss_value, logits = step[0], step[1]
    assert torch.isfinite(loss_value) and objective.prototypes.centres.grad.abs().sum() > 0
    plain = F.cross_entropy(logits.detach(), batch.labels, ignore_index=-1)
    assert loss_value.item() > plain.item()  # the auxiliary terms are added
    model.eval()  # evaluation keeps nothing
    with torch.no_grad():
        model(batch)
    assert objective.representations.batch is None


def test_only_labelled_utterances_count(tmp_path):
    config = tiny_config(tmp_path, train={"loss": {"supcon_weight": 1.0}})
    dataset = load_data(config)
    model = model_for(config, dataset).train()
    objective = build_loss(config, dataset, torch.device("cpu"), model)
    batch = next(iterate_batches(dataset.splits["train"], 4))
    batch.labels[::2] = -1
    logits = model(batch)
    z = objective.representations.head.detach()
    total = objective(logits, batch.labels)
    keep = batch.labels >= 0
    expected = F.cross_entropy(logits, batch.labels, ignore_index=-1) + supcon_loss(
        z[keep], batch.labels[keep], 0.1
    )
    torch.testing.assert_close(total, expected)


def test_a_model_without_a_shared_head_is_refused_naming_the_key(tmp_path):
    config = tiny_config(tmp_path, train={"loss": {"supcon_weight": 0.1}})
    dataset = load_data(config)
    model = model_for(config, dataset)
    model.head = nn.Sequential(model.head)  # no in_dim: not the shared head
    with pytest.raises(ConfigError, match="train.loss.representation=head"):
        build_loss(config, dataset, torch.device("cpu"), model)


@pytest.mark.parametrize(
    "extra",
    [
        {"class_weights": True, "loss": {"prototype": "running", "supcon_weight": 0.3}},
        {"loss": {"supcon_weight": 0.3, "supcon_memory": 16}},
        {"loss": {"prototype": "learned", "representation": "encoder", "label_smoothing": 0.1}},
    ],
)
def test_a_run_with_objectives_resumes_to_the_same_figures(tmp_path, extra):
    def config_in(folder):
        train_keys = {"epochs": 4, "lr": 5e-3, "run_name": "r", **extra}
        return tiny_config(folder, data={"modalities": "ta"}, train=train_keys)

    reference = train(config_in(tmp_path / "reference"))
    config = config_in(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch=stop_at(2))
    state = torch.load(run_dir_of(config) / "training_state.pt", weights_only=True)
    kept = "memory.keys" if extra["loss"].get("supcon_memory") else "prototypes.centres"
    assert kept in state["objective"]
    resumed = train(config, resume=run_dir_of(config))
    assert_same_run(resumed, reference)
    # The objective is not part of the model: corect.evaluate reproduces the figures.
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert (
        evaluate_run(resumed, "test", device="cpu")["weighted_f1"] == metrics["test"]["weighted_f1"]
    )
