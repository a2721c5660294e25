"""Train a model: ``python -m corect.train [--config configs/X.yaml] [--set key=value ...]``.

The loop itself is :func:`corect.engine.training.train`: it trains, selects the best epoch
by dev weighted F1, scores dev and test, and writes a run directory
``runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>/`` (its files are
listed in :mod:`corect.engine.training`).

The last line printed on stdout is the run directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import keep_freed_memory
from corect.config import add_overrides_argument, load_config
from corect.engine.training import train

__all__ = ["build_parser", "main", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.train",
        description=(
            "Train CORECT or a fusion baseline. With no --config, trains CORECT (t+a+v) on "
            "the embedded synthetic dataset with the published hyperparameters. Every "
            "config key can be changed with --set, e.g. --set model.causal=true "
            "train.epochs=10 data.modalities=ta. Writes runs/<dataset>/<modalities>--"
            "<task>--<model>/<date-time>-seed<seed>/ and prints that path last."
        ),
    )
    parser.add_argument("--config", help="YAML config (see configs/); default: built-in")
    add_overrides_argument(
        parser, "override config values (YAML syntax), e.g. train.seed=3 model.name=early"
    )
    parser.add_argument("--device", help="shortcut for --set train.device=... (auto|cpu|cuda)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.quiet:
        overrides.append("train.progress=false")
    try:
        config = load_config(args.config, overrides)
        run_dir = train(config)
    except INPUT_ERRORS as err:
        return report(err)
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
