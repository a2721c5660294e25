"""Train a model: ``python -m corect.train [--config configs/X.yaml] [--set key=value ...]``,
or continue a stopped run: ``python -m corect.train --resume RUN_DIR [--set train.epochs=N]``.

The loop itself is :func:`corect.engine.training.train`: it trains, selects the best epoch
by dev weighted F1, scores dev and test, and writes a run directory
``runs/<dataset>/<modalities>--<task>--<model>/<date-time>-seed<seed>/`` (its files are
listed in :mod:`corect.engine.training`). Every epoch it also writes the full training
state, so a run killed at any moment continues with ``--resume`` from its last finished
epoch, to the figures an uninterrupted run gives (:mod:`corect.engine.state`). A resumed
run takes its config from ``RUN_DIR/config.yaml``; only ``train.epochs`` may change (to
extend it); a completed run is left as it is.

The last line printed on stdout is the run directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import keep_freed_memory
from corect.config import add_overrides_argument, load_config
from corect.engine.state import ResumeError
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
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the stopped run RUN_DIR from its last finished epoch, with its "
        "config.yaml (only --set train.epochs=N may change it); a completed run is left as it is",
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
        path = args.config if args.resume is None else args.config or run_config(args.resume)
        config = load_config(path, overrides)
        run_dir = train(config, resume=args.resume)
    except INPUT_ERRORS as err:
        return report(err)
    print(run_dir)
    return 0


def run_config(run_dir: str) -> Path:
    """``RUN_DIR/config.yaml``, the config a resumed run continues with."""
    path = Path(run_dir) / "config.yaml"
    if not Path(run_dir).is_dir():
        raise ResumeError(f"{run_dir}: no such run directory; nothing to resume")
    if not path.is_file():
        raise ResumeError(f"{run_dir}: not a corect run directory (no config.yaml); cannot resume")
    return path


if __name__ == "__main__":
    sys.exit(main())
