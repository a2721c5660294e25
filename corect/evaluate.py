"""Score a trained run: ``python -m corect.evaluate --run RUN_DIR [--split test|dev]``.

Reloads the run's checkpoint (``torch.load(weights_only=True)``: no unpickling of code)
and its dataset, prints accuracy, weighted/macro F1 and a per-class table, and writes
``RUN_DIR/eval-<split>.json`` and the confusion matrix ``RUN_DIR/confusion-<split>.png``
(as ``corect.train`` draws it). The scores equal the ones in ``metrics.json``, since both
come from :func:`corect.engine.scoring.evaluate_split` on the same checkpoint
(:func:`corect.engine.scoring.evaluate_run`). A dataset that is not the one the run was
trained on (labels, dims, fingerprint) is refused before anything is written; a run that
did not complete is scored with a warning.

The last line printed on stdout is the file written, ``RUN_DIR/eval-<split>.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import DEFAULT_DEVICE, keep_freed_memory
from corect.engine.scoring import evaluate_run

__all__ = ["build_parser", "evaluate_run", "format_report", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.evaluate",
        description="Reload a run's best checkpoint, score it on a split, print a report and "
        "write RUN_DIR/eval-<split>.json and the figure RUN_DIR/confusion-<split>.png.",
    )
    parser.add_argument("--run", required=True, help="run directory printed by corect.train")
    parser.add_argument("--split", default="test", choices=["test", "dev", "train"])
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="auto | cpu | cuda")
    return parser


def format_report(metrics: dict[str, Any], title: str) -> str:
    """A plain-text report: headline figures and a per-class table."""
    lines = [
        title,
        f"accuracy     {100 * metrics['accuracy']:6.2f}",
        f"weighted F1  {100 * metrics['weighted_f1']:6.2f}",
        f"macro F1     {100 * metrics['macro_f1']:6.2f}",
        "",
        f"{'class':<14}{'F1':>8}{'support':>9}",
    ]
    for label, f1 in metrics["per_class_f1"].items():
        lines.append(f"{label:<14}{100 * f1:8.2f}{metrics['support'][label]:9d}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        metrics = evaluate_run(args.run, args.split, args.device)
    except INPUT_ERRORS as err:
        return report(err)
    print(format_report(metrics, f"{args.run} ({args.split})"))
    print(Path(args.run) / f"eval-{args.split}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
