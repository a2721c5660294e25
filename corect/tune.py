"""Hyperparameter search on Ray Tune: ``python -m corect.tune --config CONFIG --space
SPACE.yaml --trials N`` (the space format: :mod:`corect.experiments.space`).

Each trial trains CONFIG (``--set`` included) with its values and reports dev weighted F1
after every epoch; ASHA stops weak trials early, values are drawn at random or by Optuna
(``--search optuna``), and test is never scored during the search. Then the best config
and CONFIG (unless ``--no-base``) train with ``--seeds`` seeds and are scored on test.
Writes ``best.yaml``, ``trials.csv``/``.md``/``.json``, ``results.md``/``.json``,
``tune.log`` and the runs under ``<train.runs_dir>/tune/<name>-<date-time>/`` (or ``--out``;
the files: :mod:`corect.experiments.tuning`). Interrupted, run the same command with the
same ``--out``: the search continues (finished trials kept, the others resumed from their
last reported epoch through Ray Tune's checkpoints) and the final runs are reused or
resumed (:mod:`corect.experiments.trials`).

Prints the results table, then the output folder last.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from corect.common.errors import INPUT_ERRORS, report
from corect.common.runtime import keep_freed_memory
from corect.experiments.backends import add_backend_arguments, backend_from_args
from corect.experiments.runner import add_plan_arguments, command_line, parse_seeds
from corect.experiments.tuning import run_tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.tune",
        description=(
            "Search a YAML space of config values on Ray Tune by dev weighted F1 (ASHA stops\n"
            "weak trials; test is never scored); write best.yaml and the trials table, then\n"
            "train the best config and CONFIG with the seeds; print the output folder last."
        ),
        epilog="example:\n  python -m corect.tune --config configs/meld_text.yaml "
        "--space configs/spaces/meld_text.yaml --trials 30\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plan_arguments(parser, seeds=3, out="<train.runs_dir>/tune/<name>-<date-time>")
    parser.add_argument("--space", required=True, help="YAML search space (see configs/spaces/)")
    parser.add_argument("--trials", type=int, default=20, help="trials (default %(default)s)")
    parser.add_argument("--search", choices=("random", "optuna"), default="random", help="sampler")
    parser.add_argument("--grace-epochs", type=int, default=5, help="ASHA's grace period")
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--no-base", action="store_true", help="do not train CONFIG itself")
    add_backend_arguments(parser, choose=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        final = run_tune(
            args.config,
            args.space,
            args.trials,
            args.overrides,
            seeds=parse_seeds(args.seed_list, args.seeds),
            out_dir=args.out,
            name=args.name,
            backend=backend_from_args(args, "python -m corect.tune"),
            with_base=not args.no_base,
            command=command_line("corect.tune", argv),
            searcher=args.search,
            grace_epochs=args.grace_epochs,
            search_seed=args.search_seed,
        )
    except INPUT_ERRORS as err:
        return report(err)
    print(final.markdown())
    print(final.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
