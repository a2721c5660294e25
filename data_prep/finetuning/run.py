"""One fine-tuning run, top to bottom: :func:`finetune`."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from corect.common.runtime import seed_everything, select_device
from corect.data.format import load_dataset
from corect.data.text_model import bundled_model_path
from data_prep.finetuning.config import (
    FIT_SPLIT,
    SELECT_SPLIT,
    FinetuneConfig,
    check_config,
    default_out,
)
from data_prep.finetuning.encoder import context_separator, load_base
from data_prep.finetuning.resume import (
    Checkpoint,
    finished_record,
    load_state,
    run_identity,
    state_path,
)
from data_prep.finetuning.saving import finetune_record, model_dir_refusal, save_model
from data_prep.finetuning.training import build_trainer, fit, restore_best
from data_prep.finetuning.utterances import read_utterances
from data_prep.output import check_output_folder


@dataclass
class FinetuneResult:
    """Where the model went and how it scored."""

    out: Path
    record: dict[str, Any] = field(default_factory=dict)


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Run one fine-tuning as `config` says and save the adapted model directory; with
    ``config.resume``, continue the run that saved its state beside the output."""
    check_config(config)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    generator = seed_everything(config.seed)  # the generator orders the training batches
    device = select_device(config.device, key="--device")
    base_dir = Path(config.model) if config.model else bundled_model_path()

    dataset = load_dataset(config.data, splits=(FIT_SPLIT, SELECT_SPLIT))
    out = config.out or default_out(dataset, config)
    check_output_folder(out, (config.data, base_dir), model_dir_refusal)
    saved = _saved_state(out, config, base_dir)
    if isinstance(saved, FinetuneResult):
        return saved
    tokenizer, encoder = load_base(base_dir, config.progress)
    separator = context_separator(tokenizer, config.context)
    train = read_utterances(dataset, FIT_SPLIT, config.context, separator)
    dev = read_utterances(dataset, SELECT_SPLIT, config.context, separator)

    trainer = build_trainer(config, device, tokenizer, encoder, train, dev, dataset.num_classes)
    identity = run_identity(config, device, base_dir, train, dev)
    checkpoint = Checkpoint(state_path(out), identity, config.save_every_steps, started, clock)
    resumed = None if saved is None else checkpoint.restore(saved, trainer, generator)
    outcome = fit(trainer, train, dev, dataset.labels, generator, checkpoint, resumed)
    encoder = restore_best(trainer, outcome)

    record = finetune_record(
        config,
        dataset,
        base_dir,
        train=train,
        dev=dev,
        separator=separator,
        trainer=trainer,
        outcome=outcome,
        started=checkpoint.started,
        clock=checkpoint.clock,
    )
    save_model(out, encoder, tokenizer, trainer.head, base_dir, record)
    checkpoint.remove()
    return FinetuneResult(Path(out), record)


def _saved_state(
    out: Path, config: FinetuneConfig, base_dir: Path
) -> dict[str, Any] | FinetuneResult | None:
    """What the run starts from: None (from scratch), the saved state to resume, or, on
    ``--resume`` of a run that finished, its result (nothing is left to do)."""
    path = state_path(out)
    if not config.resume:
        if path.exists():
            print(
                f"note: {path} holds the state of an unfinished run; this run starts over and "
                "replaces it (--resume continues it)",
                file=sys.stderr,
            )
        return None
    record = finished_record(out, config, base_dir)
    if record is not None:
        print(f"{out}: already finished with these settings; nothing to resume", file=sys.stderr)
        return FinetuneResult(Path(out), record)
    return load_state(path)
