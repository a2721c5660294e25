"""Offline vs causal: ``python -m corect.compare_modes [--config CONFIG] [--seeds N]``.

Trains the same model twice per seed, with the same data, config and seed: once offline
(``model.causal: false``) and once causal (``model.causal: true``: no prediction depends on
a later utterance), or, with ``--runs`` / ``--causal-runs``, scores runs trained before.
Writes ``results.md``, ``results.json``, ``results.png`` and ``compare.log`` under
``<train.runs_dir>/compare/<name>-<date-time>/`` (or ``--out``; the files and where the
runs go: :mod:`corect.experiments.compare`). Run it again with the same ``--out`` and the
finished runs are reused, the one that was training resumes from its last finished epoch
(:mod:`corect.experiments.reuse`). With ``--backend ray`` the runs train as Ray tasks,
several at once (:mod:`corect.experiments.backends`).

The table is printed at the end, and the output folder last.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import keep_freed_memory
from corect.experiments.backends import add_backend_arguments, backend_from_args
from corect.experiments.compare import compare
from corect.experiments.runner import add_plan_arguments, command_line, parse_list, parse_seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.compare_modes",
        description=(
            "Offline vs causal. Trains the model of CONFIG twice per seed, once offline and\n"
            "once causal (model.causal=true: no prediction uses a later utterance), with the\n"
            "same data, config and seed (or scores runs given with --runs/--causal-runs).\n"
            "Scores both on the test split and writes a Markdown table and JSON under\n"
            "<train.runs_dir>/compare/<name>-<date-time>/: accuracy, weighted F1, macro F1\n"
            "and per-class F1 (mean ± std over seeds, %), the difference causal - offline,\n"
            "and weighted F1 by position in the dialogue (1-5, 6-10, 11-20, 21+); results.png\n"
            "draws the last and the per-class difference. The runs themselves go to the\n"
            "usual runs directory, side by side in TensorBoard.\n"
            "Prints the table, then the output folder last."
        ),
        epilog=(
            "Examples:\n"
            "  python -m corect.compare_modes --seeds 3\n"
            "  python -m corect.compare_modes --config configs/meld_text.yaml --seeds 3 "
            "--set train.epochs=20\n"
            "  python -m corect.compare_modes --runs runs/a/x/r1,runs/a/x/r2 "
            "--causal-runs runs/a/x-causal/r1,runs/a/x-causal/r2"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plan_arguments(parser, seeds=3, out="<train.runs_dir>/compare/<name>-<date-time>")
    parser.add_argument(
        "--runs",
        default="",
        metavar="DIR,...",
        help="score these offline runs instead of training (needs --causal-runs)",
    )
    parser.add_argument(
        "--causal-runs", default="", metavar="DIR,...", help="the causal runs to compare with"
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "dev"],
        help="split to score (default %(default)s)",
    )
    add_backend_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        comparison = compare(
            args.config,
            parse_seeds(args.seed_list, args.seeds),
            args.overrides,
            runs=parse_list(args.runs),
            causal_runs=parse_list(args.causal_runs),
            name=args.name,
            out_dir=args.out,
            split=args.split,
            command=command_line("corect.compare_modes", argv),
            backend=backend_from_args(args),
        )
    except INPUT_ERRORS as err:
        return report(err)
    print(comparison.markdown(complete=True))
    print(comparison.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
