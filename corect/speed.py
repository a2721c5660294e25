"""Speed benchmark: ``python -m corect.speed [--modalities tav,t] [--epochs 2]``.

Measures, on IEMOCAP-sized synthetic data (the embedded default: 120 train+dev
dialogues, about 5,000 training utterances, dims t 384 / a 100 / v 512) with the
published sizes (batch 10, hidden 100, wp 11, wf 5, 7 graph heads), graph construction
time per batch (mean and max over an epoch), seconds per training epoch (the training
loop's own step, no evaluation), training and inference throughput in utterances per
second, and the per-epoch training-state write that ``train --resume`` needs (seconds,
and its share of the epoch).

Results are printed as a table and written to ``<train.runs_dir>/speed/<date-time>.json``
(or ``--out``), whose path is printed last. Use a quiet machine: the figures are
wall-clock times. What is timed, and how: :mod:`corect.experiments.speed`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import DEFAULT_DEVICE, keep_freed_memory
from corect.config import add_overrides_argument
from corect.experiments.speed import run_speed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.speed",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    default = " (default: %(default)s)"
    parser.add_argument(
        "--modalities", default="tav,t", help="comma-separated modality sets" + default
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="timed epochs (after one warm-up)" + default
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="auto | cpu | cuda" + default)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = default)" + default
    )
    add_overrides_argument(parser, "config overrides, e.g. model.gnn_heads=4")
    parser.add_argument(
        "--out", help="directory for the JSON result (default: <train.runs_dir>/speed)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        speed = run_speed(
            args.modalities.split(","),
            args.epochs,
            args.device,
            args.overrides,
            args.out,
            args.threads,
        )
    except INPUT_ERRORS as err:
        return report(err)
    print(speed.header())
    print(speed.table())
    print(speed.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
