"""Benchmark: train several models over several seeds and tabulate their test scores.

Example (CORECT against every fusion baseline, 3 seeds, on the embedded synthetic data)::

    python -m corect.benchmark --models corect,early,late,gated --seeds 3

Every model and seed (and with ``--modes offline,causal`` both modes) trains with the
base config plus the model's overrides; ``results.md``, ``results.json``, ``results.png``,
the runs and ``benchmark.log`` land under ``<train.runs_dir>/benchmarks/<name>-<date-time>/``
(or ``--out``; the files: :mod:`corect.experiments.benchmark`). Run the same command again
with the same ``--out`` and the finished runs are reused, the one that was training when
the benchmark stopped resumes from its last finished epoch (:mod:`corect.experiments.reuse`);
with ``--backend ray`` the runs train as Ray tasks, several at once
(:mod:`corect.experiments.backends`).

Prints the table, then the output directory last.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import keep_freed_memory
from corect.experiments.backends import add_backend_arguments, backend_from_args
from corect.experiments.benchmark import DEFAULT_MODELS, run_benchmark
from corect.experiments.runner import add_plan_arguments, command_line, parse_list, parse_seeds
from corect.models.registry import VARIANTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.benchmark",
        description=(
            "Train several models over several seeds; write a Markdown table and a JSON file\n"
            "of their test accuracy, weighted F1 and macro F1 (mean ± std over seeds, in %),\n"
            "parameter counts and seconds per epoch, under\n"
            "<train.runs_dir>/benchmarks/<name>-<date-time>/ (or --out)."
        ),
        epilog=(
            "models (name: config overrides):\n"
            + "\n".join(f"  {n:20s} {' '.join(o)}" for n, o in VARIANTS.items())
            + "\n\n`context` uses the fusion of model.fusion; context-<fusion> names it.\n\n"
            "example:\n  python -m corect.benchmark --models corect,early,late --seeds 3 "
            "--set train.epochs=20\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plan_arguments(parser, seeds=1, out="<train.runs_dir>/benchmarks/<name>-<date-time>")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated model names, see below (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--modes",
        default="",
        help="offline, causal or offline,causal: train every model in each mode (causal runs "
        "are named <model>-causal-seed<k>; default: the mode the config says)",
    )
    parser.add_argument(
        "--list-models", action="store_true", help="print the model names and overrides, exit"
    )
    add_backend_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if args.list_models:
        for name, overrides in VARIANTS.items():
            print(f"{name:22s} {' '.join(overrides)}")
        return 0
    try:
        bench = run_benchmark(
            args.config,
            parse_list(args.models),
            parse_seeds(args.seed_list, args.seeds),
            args.overrides,
            args.out,
            args.name,
            command=command_line("corect.benchmark", argv),
            modes=parse_list(args.modes),
            backend=backend_from_args(args),
        )
    except INPUT_ERRORS as err:
        return report(err)
    print(bench.table())
    print(f"\n{bench.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
