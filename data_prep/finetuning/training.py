"""Training the encoder and its classifier head: the :class:`Trainer` (one epoch, dev
predictions, snapshots of the weights that train), built by :func:`build_trainer`, and
the epoch loop :func:`fit`, which keeps the weights of the best dev epoch and hands the
state to a :class:`~data_prep.finetuning.resume.Checkpoint` as it goes."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from corect.common.metrics import classification_metrics
from corect.common.runtime import autocast, grad_scaler
from corect.data.text_model import embed_batch
from corect.engine.losses import class_weights
from data_prep.finetuning.config import FinetuneConfig
from data_prep.finetuning.encoder import embed, prepare_encoder
from data_prep.finetuning.utterances import Utterances, length_batches

if TYPE_CHECKING:
    from data_prep.finetuning.resume import Checkpoint

Weights = dict[str, dict[str, torch.Tensor]]  # "encoder" / "head" -> state dict


@dataclass
class Position:
    """Where training stands: the epoch under way (1-based; past the last one: training
    is over), its batches done and their loss sums, and the batch-order generator's state
    before that epoch's batches were drawn (from which a resumed run redraws them)."""

    epoch: int = 1
    batches_done: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    order: torch.Tensor | None = None

    def add(self, loss: float, size: int) -> None:
        """Count one batch of `size` utterances done with mean loss `loss`."""
        self.batches_done += 1
        self.loss_sum += loss * size
        self.seen += size

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)


@dataclass
class Trainer:
    """What one fine-tuning run trains: encoder, head, optimizer and their settings."""

    config: FinetuneConfig
    device: torch.device
    tokenizer: Any
    encoder: Any
    head: torch.nn.Linear
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    scaler: Any
    total_steps: int
    class_weights: torch.Tensor | None = None  # of the loss, on the CPU (None = unweighted)
    frozen_train: torch.Tensor | None = None  # embeddings, when the encoder never changes
    frozen_dev: torch.Tensor | None = None
    step: int = 0

    @property
    def scale(self) -> float:
        """Unit-norm embeddings times sqrt(dim): unit-variance head inputs."""
        return math.sqrt(self.head.in_features)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def train_epoch(
        self,
        train: Utterances,
        batches: list[list[int]],
        position: Position,
        desc: str,
        on_step: Callable[[Position], None] | None = None,
    ) -> float:
        """One pass over `batches` of `train` from `position` (a resumed epoch skips the
        batches done and continues their loss sums), calling ``on_step(position)`` after
        each step; the mean training loss."""
        self.encoder.train(self.config.mode != "frozen")
        self.head.train()
        labels = torch.tensor(train.labels)
        bar = tqdm(
            batches[position.batches_done :],
            desc=desc,
            unit="batch",
            initial=position.batches_done,
            total=len(batches),
            disable=not self.config.progress,
        )
        for index in bar:
            if self.step >= self.total_steps:
                break
            position.add(self.train_step(train, labels, index), len(index))
            bar.set_postfix(loss=f"{position.mean_loss:.4f}")
            if on_step is not None:
                on_step(position)
        bar.close()
        return position.mean_loss

    def train_step(self, train: Utterances, labels: torch.Tensor, index: list[int]) -> float:
        """One optimizer step on the utterances `index` of `train`; its loss."""
        device = self.device
        with autocast(device):
            if self.frozen_train is not None:
                pooled = self.frozen_train[index].to(device)
            else:
                batch = [train.inputs[i] for i in index]
                pooled = embed_batch(
                    self.encoder, self.tokenizer, batch, self.config.max_length, device
                )
            logits = self.head(pooled.float() * self.scale)
            loss = self.loss_fn(logits.float(), labels[index].to(device))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    def predict_dev(self, dev: Utterances) -> np.ndarray:
        """Class ids the current encoder + head give the dev utterances."""
        pooled = self.frozen_dev
        if pooled is None:
            pooled = embed(self.encoder, self.tokenizer, dev.inputs, self.config, self.device)
        with torch.inference_mode():
            logits = self.head(pooled.to(self.device) * self.scale)
        return logits.argmax(-1).cpu().numpy()

    def snapshot(self) -> Weights:
        """CPU copies of the weights that train (full: all; lora: adapters) and the head."""

        def copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

        encoder = {
            k: v
            for k, v in self.encoder.state_dict().items()
            if self.config.mode == "full" or "lora_" in k
        }
        return {"encoder": copy(encoder), "head": copy(self.head.state_dict())}


def build_trainer(
    config: FinetuneConfig,
    device: torch.device,
    tokenizer: Any,
    encoder: Any,
    train: Utterances,
    dev: Utterances,
    num_classes: int,
) -> Trainer:
    """The encoder as the mode trains it, a new head, the optimizer and schedule, the
    (class-weighted) loss; frozen: the embeddings, computed once."""
    encoder = prepare_encoder(encoder, config, device)
    head = torch.nn.Linear(int(encoder.config.hidden_size), num_classes).to(device)
    optimizer, scheduler, total_steps = _optimizer(config, encoder, head, len(train.labels))
    weights = class_weights(train.labels, num_classes, config.class_weights)
    trainer = Trainer(
        config=config,
        device=device,
        tokenizer=tokenizer,
        encoder=encoder,
        head=head,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device)),
        scaler=grad_scaler(device),
        total_steps=total_steps,
        class_weights=weights,
    )
    if config.mode == "frozen":  # the encoder never changes: embed once
        trainer.frozen_train = embed(encoder, tokenizer, train.inputs, config, device)
        trainer.frozen_dev = embed(encoder, tokenizer, dev.inputs, config, device)
    return trainer


def _optimizer(
    config: FinetuneConfig, encoder: Any, head: torch.nn.Linear, num_train: int
) -> tuple[torch.optim.Optimizer, Any, int]:
    """AdamW over the head (at ``head_lr``) and the encoder weights that train (at ``lr``),
    a linear warm-up then linear decay, and the number of steps they are planned for."""
    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    groups = [{"params": list(head.parameters()), "lr": config.head_lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(num_train / config.batch_size)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup * total_steps)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), total_steps


@dataclass
class FitOutcome:
    """The epochs run (one record each) and the best of them by dev weighted F1."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_weighted_f1: float = -1.0
    best_weights: Weights = field(default_factory=dict)
    train_seconds: float = 0.0


def fit(
    trainer: Trainer,
    train: Utterances,
    dev: Utterances,
    label_names: Sequence[str],
    generator: torch.Generator,
    checkpoint: Checkpoint | None = None,
    resumed: tuple[FitOutcome, Position] | None = None,
) -> FitOutcome:
    """Train epoch after epoch (batches ordered by `generator`), score dev after each and
    keep the weights of the best; stop early once ``max_steps`` steps are done. The
    `checkpoint` saves the state every N steps and after each epoch; a run `resumed` from
    it (the outcome and position it restored) continues where the saved one stopped."""
    config = trainer.config
    lengths = [len(t) for t in train.inputs]
    outcome, position = resumed or (FitOutcome(), Position())

    def on_step(position: Position) -> None:
        if checkpoint is not None:
            checkpoint.after_step(trainer, outcome, position)

    for epoch in range(position.epoch, config.epochs + 1):
        tic = time.perf_counter()
        position.order = generator.get_state()  # (a resumed run's is back at the saved one)
        batches = length_batches(lengths, config.batch_size, generator)
        desc = f"epoch {epoch}/{config.epochs}"
        train_loss = trainer.train_epoch(train, batches, position, desc, on_step)
        outcome.train_seconds += time.perf_counter() - tic
        entry = score_epoch(trainer, dev, label_names, epoch, train_loss, outcome.train_seconds)
        outcome.history.append(entry)
        if config.progress:
            print(
                f"epoch {epoch}: train loss {train_loss:.4f}, dev weighted F1 "
                f"{entry['dev_weighted_f1']:.4f}",
                file=sys.stderr,
            )
        if entry["dev_weighted_f1"] > outcome.best_weighted_f1:
            outcome.best_epoch, outcome.best_weighted_f1 = epoch, entry["dev_weighted_f1"]
            outcome.best_weights = trainer.snapshot()
        over = trainer.step >= trainer.total_steps
        position = Position(config.epochs + 1 if over else epoch + 1, order=generator.get_state())
        if checkpoint is not None:
            checkpoint.save(trainer, outcome, position)
        if over:
            break
    return outcome


def score_epoch(
    trainer: Trainer,
    dev: Utterances,
    label_names: Sequence[str],
    epoch: int,
    train_loss: float,
    train_seconds: float,
) -> dict[str, Any]:
    """The record of one epoch: steps so far, training loss, dev scores and timings."""
    tic = time.perf_counter()
    scores = classification_metrics(np.array(dev.labels), trainer.predict_dev(dev), label_names)
    return {
        "epoch": epoch,
        "steps": trainer.step,
        "train_loss": train_loss,
        "dev_weighted_f1": scores["weighted_f1"],
        "dev_accuracy": scores["accuracy"],
        "train_seconds": round(train_seconds, 2),
        "dev_seconds": round(time.perf_counter() - tic, 2),
    }


def restore_best(trainer: Trainer, outcome: FitOutcome) -> Any:
    """The encoder (LoRA adapters merged into its weights) and head of the best epoch,
    in eval mode on the CPU."""
    encoder = trainer.encoder
    if outcome.best_weights["encoder"]:
        encoder.load_state_dict(outcome.best_weights["encoder"], strict=False)
    trainer.head.load_state_dict(outcome.best_weights["head"])
    if trainer.config.mode == "lora":
        encoder = encoder.merge_and_unload()
    encoder.to("cpu").eval()
    return encoder
