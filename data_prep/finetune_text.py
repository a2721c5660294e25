"""Fine-tune a local Hugging Face text encoder as an utterance classifier on a corect
dataset's train split, pick the epoch by dev weighted F1, and save the adapted encoder.

    python -m data_prep.finetune_text --data runs/data/meld_emotion --mode full
    python -m data_prep.meld --csv-dir MELD --text-model runs/text_models/meld_emotion_full_seed0

The input is a dataset directory written by the converters (``data_prep.meld``,
``data_prep.jsonl``, ...): they store each split's utterance texts (``<split>.texts.json``)
and speakers, so one reader serves every source, labels are already mapped, and the
train/dev split is the one the conversation model uses. This module is the command line;
the work is done in :mod:`data_prep.finetuning` (one module per part).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from corect.data.text_model import RECORD_FILE
from corect.engine.losses import CLASS_WEIGHTS
from data_prep.finetuning.config import FINETUNE_MODES, FinetuneConfig
from data_prep.finetuning.resume import STATE_SUFFIX
from data_prep.finetuning.run import FinetuneResult, finetune
from data_prep.options import HelpFormatter, run_main

DESCRIPTION = f"""\
Fine-tune a local Hugging Face text encoder (default: the bundled all-MiniLM-L6-v2) as an
utterance classifier on a corect dataset's train split; the epoch is chosen by dev
weighted F1 and the test split is never read. The result is a plain Hugging Face model
directory for --text-model of data_prep.meld / data_prep.jsonl (features: mean pooling +
L2 norm, cached under a key that fingerprints the new weights).

modes:
  full     every encoder weight is trained
  lora     low-rank adapters (peft: pip install -e .[lora]), merged into the saved weights
  frozen   only the classifier head is trained; the saved encoder equals the base

--context K: utterance i's input is the K previous utterances and itself, each as
"speaker: text", joined by the tokenizer's separator token (past only: causal). The
setting is recorded in {RECORD_FILE}; the feature writer builds the same inputs.

CPU by default (CUDA with mixed precision when available, or --device); set
OMP_NUM_THREADS to bound CPU threads. --max-steps N stops early, e.g. to time a run.

A stopped run (killed, preempted) continues with the same command plus --resume: the
state is saved beside --out every --save-every-steps steps and after each epoch.
"""


# (option, type, metavar, help); the default comes from FinetuneConfig.
_NUMBERS = (
    ("--epochs", int, "N", "passes over train"),
    ("--batch-size", int, "N", "utterances per step"),
    ("--eval-batch-size", int, "N", "utterances per batch when scoring dev"),
    ("--lr", float, "LR", "encoder learning rate"),
    ("--head-lr", float, "LR", "classifier head learning rate"),
    ("--weight-decay", float, "W", "AdamW weight decay"),
    ("--warmup", float, "F", "fraction of steps with a linear warm-up (then linear decay)"),
    (
        "--max-length",
        int,
        "N",
        "tokens per input (longer ones are truncated; with --context, the oldest first)",
    ),
    (
        "--context",
        int,
        "K",
        "previous utterances (with speaker names) in each input; 0 = utterance only",
    ),
    ("--seed", int, "S", "seed of initialisation and batch order"),
)
_LORA = (
    ("--lora-r", int, "R", "adapter rank"),
    ("--lora-alpha", int, "A", "adapter scale"),
    ("--lora-dropout", float, "P", "adapter dropout"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.finetune_text",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    defaults = FinetuneConfig(data=Path("."))

    def numbers(group, options) -> None:
        for flag, kind, metavar, text in options:
            default = getattr(defaults, flag[2:].replace("-", "_"))
            group.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)

    _add_paths(parser)
    parser.add_argument("--mode", choices=FINETUNE_MODES, default=defaults.mode, help="what trains")
    numbers(parser, _NUMBERS)
    parser.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTS,
        default=defaults.class_weights,
        help="loss weights for rare classes: balanced = n/(C*count), sqrt = its square root",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimizer steps (timing, smoke tests)",
    )
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    _add_resume(parser, defaults)
    lora = parser.add_argument_group("LoRA (--mode lora)")
    numbers(lora, _LORA)
    lora.add_argument(
        "--lora-targets",
        metavar="A,B",
        help="module names to adapt (default: peft's choice for the architecture, e.g. "
        "query,value for BERT)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _add_paths(parser: argparse.ArgumentParser) -> None:
    """--data, --model and --out."""
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="corect dataset directory with utterance texts (<split>.texts.json)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="local Hugging Face model directory to start from (default: the bundled "
        "all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="model directory to write, replaced atomically (default: "
        "runs/text_models/<name>_<task>_<mode>[_ctx<K>]_seed<S>)",
    )


def _add_resume(parser: argparse.ArgumentParser, defaults: FinetuneConfig) -> None:
    """--resume and --save-every-steps."""
    group = parser.add_argument_group("resuming a stopped run")
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run that was stopped, from the state it saved beside --out "
        f"(<out>{STATE_SUFFIX}), with the same options (others are refused, naming them); "
        "it makes the same model an uninterrupted run makes. No saved state: an error; a "
        "model already finished with these options: nothing to do",
    )
    group.add_argument(
        "--save-every-steps",
        type=int,
        default=defaults.save_every_steps,
        metavar="N",
        help="save the resumable state every N optimizer steps (a few minutes of a CPU run) "
        "and after each epoch; 0 = after each epoch only. It is removed once the model is "
        "written",
    )


def config_from_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """The :class:`FinetuneConfig` that the command line `argv` describes."""
    args = build_parser().parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "quiet"}
    if values["lora_targets"]:
        values["lora_targets"] = [t.strip() for t in values["lora_targets"].split(",")]
    return FinetuneConfig(**values, progress=not args.quiet)


def run(argv: Sequence[str] | None = None) -> FinetuneResult:
    """Parse `argv`, fine-tune, print where the model went."""
    result = finetune(config_from_args(argv))
    record = result.record
    print(
        f"{record['mode']} fine-tuning of {record['base_model']}: best dev weighted F1 "
        f"{record['dev_weighted_f1']:.4f} (epoch {record['best_epoch']}), "
        f"{record['time']['train_seconds']:.0f} s training -> {result.out}"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
