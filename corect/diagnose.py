"""What each part of a trained run does: ``python -m corect.diagnose --run RUN_DIR``.

Reloads the run's best checkpoint and rebuilds its initial weights (same seed), then
measures per part, on a split: weight drift from the initial values, gradient norms at
the initial and trained weights, how much each attention block and graph layer changes
its input, attention entropies, and (CORECT) the accuracy with each block of the head's
input replaced by its mean (:func:`corect.engine.diagnostics.diagnose_run`). Prints a summary and
writes ``RUN_DIR/diagnose-<split>.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import keep_freed_memory
from corect.engine.diagnostics import diagnose_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.diagnose",
        description="Measure what each part of a trained run does (weight drift, gradient "
        "norms, residual ratios, attention entropy, head-input ablation) on a split; "
        "write RUN_DIR/diagnose-<split>.json and print a summary.",
    )
    parser.add_argument("--run", required=True, help="run directory printed by corect.train")
    parser.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        results = diagnose_run(args.run, args.split)
    except INPUT_ERRORS as err:
        return report(err)
    for section, values in results.items():
        print(section)
        for name, value in values.items():
            print(f"  {name:<40} {value:.4f}")
    print(Path(args.run) / f"diagnose-{args.split}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
