"""Offline vs causal: ``python -m corect.compare_modes [--config CONFIG] [--seeds N]``.

Trains the same model twice per seed, with the same data, config and seed: once offline
(``model.causal: false``) and once causal (``model.causal: true``: no prediction depends on
a later utterance), or, with ``--runs`` / ``--causal-runs``, scores runs trained before.
Both modes' runs land in the usual runs directory, side by side in TensorBoard::

    runs/<dataset>/<modalities>--<task>--<model>/<name>-<date-time>-seed<k>/
    runs/<dataset>/<modalities>--<task>--<model>-causal/<name>-<date-time>-seed<k>/

Every run's best checkpoint is scored on the test split (:func:`corect.engine.runs.predict`, as
``corect.evaluate`` does) and the comparison is written, atomically and after every run,
under ``<train.runs_dir>/compare/<name>-<date-time>/``:

- ``results.md``: accuracy, weighted F1, macro F1 and per-class F1 per mode (mean ± sample
  std over seeds, in %), the difference causal - offline, and weighted F1 by position in
  the dialogue (utterances 1-5, 6-10, 11-20, 21+: early utterances have little past);
- ``results.json``: the same, plus every run's figures and directory;
- ``results.png``: weighted F1 by position in the dialogue for both modes (mean and
  ± std band over seeds, every seed a dot) and the per-class F1 difference causal -
  offline (:func:`corect.common.plots.modes_figure`), once both modes have a run;
- ``compare.log``: the log, training included.

The table is printed at the end, and the path of ``results.md`` last. With ``--backend
ray`` the runs train as Ray tasks, several at once (:mod:`corect.experiments.backends`); everything
else is the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from corect.common import plots
from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import write_atomic
from corect.common.metrics import POSITION_BUCKETS
from corect.common.runtime import keep_freed_memory
from corect.config import Config, ConfigError
from corect.data.format import Dataset, DatasetError
from corect.engine.runs import load_data, load_run, score_run
from corect.engine.training import train
from corect.experiments.backends import add_backend_arguments, backend_from_args
from corect.experiments.runner import (
    Backend,
    add_plan_arguments,
    check_comparable,
    command_line,
    experiment_log,
    fmt_mean_std,
    mean_std,
    parse_list,
    parse_seeds,
    run_plan,
    train_or_reuse,
    training_config,
)

log = logging.getLogger("corect.compare_modes")
MODES = ("offline", "causal")
PlanItem = tuple[str, Config | Path]  # mode, the run's config (or a trained run)
HEADLINE = (("accuracy", "Accuracy"), ("weighted_f1", "Weighted F1"), ("macro_f1", "Macro F1"))


@dataclass
class ModeRun:
    """One scored run."""

    mode: str
    seed: int
    run_dir: str
    metrics: dict[str, Any]


@dataclass
class Comparison:
    """The runs of both modes; renders the Markdown table and the JSON."""

    name: str
    out_dir: Path
    labels: list[str]
    planned: int
    split: str = "test"
    description: str = ""
    command: str = ""
    runs: list[ModeRun] = field(default_factory=list)

    def values(self, mode: str, getter: Any) -> dict[int, float]:
        """seed -> figure (in %) of `mode`'s runs; `getter` picks it from a metrics dict."""
        values = {r.seed: 100 * getter(r.metrics) for r in self.runs if r.mode == mode}
        return {seed: v for seed, v in values.items() if np.isfinite(v)}  # NaN: empty bucket

    def row(self, getter: Any) -> dict[str, Any]:
        """Mean/std per mode and the difference causal - offline (std over paired seeds)."""
        per_mode = {mode: self.values(mode, getter) for mode in MODES}
        out: dict[str, Any] = {
            mode: mean_std(list(v.values())) if v else None for mode, v in per_mode.items()
        }
        out["difference"] = None
        if out["offline"] and out["causal"]:
            paired = sorted(set(per_mode["offline"]) & set(per_mode["causal"]))
            diffs = [per_mode["causal"][s] - per_mode["offline"][s] for s in paired]
            out["difference"] = {
                "mean": out["causal"]["mean"] - out["offline"]["mean"],
                "std": mean_std(diffs)["std"] if diffs else float("nan"),
                "paired_seeds": paired,
            }
        return out

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every compared figure: headline metrics, per-class F1, weighted F1 by position."""
        rows = {key: self.row(lambda m, k=key: m[k]) for key, _ in HEADLINE}
        for label in self.labels:
            rows[f"f1/{label}"] = self.row(lambda m, c=label: m["per_class_f1"][c])
        for bucket in self.buckets():
            rows[f"position/{bucket}"] = self.row(
                lambda m, b=bucket: m["by_position"][b]["weighted_f1"]
            )
        return rows

    def buckets(self) -> list[str]:
        return [f"{lo}-{hi}" if hi is not None else f"{lo}+" for lo, hi in POSITION_BUCKETS]

    def table(self) -> str:
        """Two Markdown tables: overall figures, then weighted F1 by dialogue position."""
        rows = self.rows()

        def cells(row: dict[str, Any]) -> list[str]:
            diff = row["difference"]
            delta = "-"
            if diff is not None:
                delta = f"{diff['mean']:+.2f}"
                if len(diff["paired_seeds"]) > 1:
                    delta += f" ± {diff['std']:.2f}"
            return [*(fmt_mean_std(row[m]) if row[m] else "-" for m in MODES), delta]

        head = ["Offline", "Causal", "Δ causal − offline"]
        lines = [
            f"| {self.split.capitalize()} (%) | " + " | ".join(head) + " |",
            "|---|---:|---:|---:|",
        ]
        names = [*HEADLINE, *((f"f1/{c}", f"F1 {c}") for c in self.labels)]
        for key, label in names:
            lines.append(f"| {label} | " + " | ".join(cells(rows[key])) + " |")
        lines += [
            "",
            "| Weighted F1 by position (%) | Utterances | " + " | ".join(head) + " |",
            "|---|---:|---:|---:|---:|",
        ]
        first = next((r for r in self.runs), None)
        for bucket in self.buckets():
            count = first.metrics["by_position"][bucket]["count"] if first else 0
            lines.append(
                f"| {bucket} | {count} | " + " | ".join(cells(rows[f"position/{bucket}"])) + " |"
            )
        return "\n".join(lines)

    def to_dict(self, complete: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "complete": complete,
            "command": self.command,
            "description": self.description,
            "split": self.split,
            "labels": self.labels,
            "rows": self.rows(),
            "runs": [
                {
                    "mode": r.mode,
                    "seed": r.seed,
                    "run_dir": r.run_dir,
                    "metrics": {k: v for k, v in r.metrics.items() if k != "confusion"},
                }
                for r in self.runs
            ],
            "units": "% ; mean ± sample std over seeds; difference = causal - offline, its "
            "std over the seeds both modes share",
        }

    def markdown(self, complete: bool) -> str:
        text = f"# Offline vs causal: {self.name}\n\n"
        if self.description:
            text += self.description + "\n\n"
        if self.command:
            text += f"Command: `{self.command}`\n\n"
        if not complete:
            text += f"**Incomplete: {len(self.runs)}/{self.planned} runs.**\n\n"
        text += self.table() + "\n\nRuns:\n\n"
        text += "\n".join(f"- {r.mode}, seed {r.seed}: `{r.run_dir}`" for r in self.runs)
        return text + "\n"

    def figure(self) -> None:
        """Draw results.png once both modes have a run (a failure only warns)."""
        if not all(any(r.mode == mode for r in self.runs) for mode in MODES):
            return
        buckets, rows = self.buckets(), self.rows()
        counts = [self.runs[0].metrics["by_position"][b]["count"] for b in buckets]
        position_f1 = {
            mode: [
                [100 * r.metrics["by_position"][b]["weighted_f1"] for b in buckets]
                for r in self.runs
                if r.mode == mode
            ]
            for mode in MODES
        }
        nan = {"mean": float("nan"), "std": float("nan")}
        differences = [rows[f"f1/{c}"]["difference"] or nan for c in self.labels]
        overall = rows["weighted_f1"]["difference"]
        title = (
            f"Offline vs causal: {self.name}, {self.split} split; weighted F1 causal − "
            f"offline {overall['mean']:+.2f} points"
        )
        with plots.never_fatal("the offline-vs-causal figure"):
            figure = plots.modes_figure(
                buckets,
                counts,
                position_f1,
                self.labels,
                [(d["mean"], d["std"]) for d in differences],
                title,
            )
            plots.save_figure(figure, self.out_dir / "results.png")

    def write(self, complete: bool) -> None:
        """Rewrite results.md, results.json and results.png atomically."""
        write_atomic(self.out_dir / "results.md", self.markdown(complete))
        write_atomic(
            self.out_dir / "results.json", json.dumps(self.to_dict(complete), indent=1) + "\n"
        )
        self.figure()


def mode_config(
    config_path: str | None, overrides: Sequence[str], mode: str, seed: int, run_name: str
) -> Config:
    """The validated config of one run: the base config, then mode, seed and run name."""
    causal = f"model.causal={'true' if mode == 'causal' else 'false'}"
    return training_config(config_path, overrides, [causal], seed, f"{run_name}-seed{seed}")


def describe(config: Config, dataset: Dataset, seeds: Sequence[int], split: str) -> str:
    m = config.model
    encoders = ", ".join(f"{k}: {m.encoders[k]}" for k in config.data.modalities)
    return (
        f"Dataset `{dataset.name}` ({dataset.task}, {dataset.num_classes} classes), "
        f"modalities `{config.data.modalities}`, model `{m.name}` (hidden {m.hidden_size}, "
        f"encoders {encoders}, wp {m.wp}, wf {m.wf} offline / 0 causal), "
        f"{config.train.epochs} epochs max, seeds {', '.join(map(str, seeds))}; "
        f"{split} split, checkpoint with the best dev weighted F1."
    )


def compare(
    config_path: str | None = None,
    seeds: Sequence[int] = (1, 2, 3),
    overrides: Sequence[str] = (),
    *,
    runs: Sequence[str] = (),
    causal_runs: Sequence[str] = (),
    name: str | None = None,
    out_dir: str | Path | None = None,
    split: str = "test",
    command: str = "",
    backend: Backend | None = None,
) -> Comparison:
    """Train (or load) both modes, score them, write and return the comparison. Runs
    train on `backend` (default: here, one after another); scoring is done here."""
    name = name or (Path(config_path).stem if config_path else "synthetic")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if runs or causal_runs:
        if not (runs and causal_runs):
            raise ConfigError("give both --runs (offline) and --causal-runs")
        plan = [("offline", Path(r)) for r in runs] + [("causal", Path(r)) for r in causal_runs]
        given: dict[Path, str] = {}
        for mode, run_dir in plan:
            if run_dir.resolve() in given:
                raise ConfigError(
                    f"{run_dir} is given twice (as {given[run_dir.resolve()]} and {mode}); "
                    "each run counts once"
                )
            given[run_dir.resolve()] = mode
        base = load_run(plan[0][1])[0]
    else:
        if not seeds:
            raise ConfigError("--seeds: give at least one seed")
        # Build and validate every run's config before the first one trains.
        plan = [
            (mode, mode_config(config_path, overrides, mode, seed, f"{name}-{stamp}"))
            for seed in seeds
            for mode in MODES
        ]
        base = plan[0][1]
    out = Path(out_dir) if out_dir else Path(base.train.runs_dir) / "compare" / f"{name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    with experiment_log(out / "compare.log"):
        dataset = load_data(base)
        if split not in dataset.splits:
            raise DatasetError(f"split {split!r} not in dataset {dataset.path}")
        comparison = Comparison(name, out, list(dataset.labels), len(plan), split, command=command)
        configs: dict[str, Config] = {}
        done: dict[int, ModeRun] = {}

        def record(position: int, run_dir: Path) -> None:
            mode = plan[position][0]
            config, _, metrics = score_run(run_dir, dataset, split)
            expected = mode == "causal"
            if config.model.causal != expected:
                raise ConfigError(
                    f"{run_dir}: model.causal={config.model.causal}, but it was given as "
                    f"{'a causal' if expected else 'an offline'} run"
                )
            twin = [
                r.run_dir for r in comparison.runs if (r.mode, r.seed) == (mode, config.train.seed)
            ]
            if twin:
                raise ConfigError(
                    f"{run_dir}: {mode} run with seed {config.train.seed}, like {twin[0]}; "
                    "runs of one seed are not independent: give runs of distinct seeds"
                )
            configs[str(run_dir)] = config
            check_comparable(configs)
            done[position] = ModeRun(mode, config.train.seed, str(run_dir), metrics)
            comparison.runs = [done[k] for k in sorted(done)]  # in plan order
            log.info(
                "%s seed %d: %s acc %.2f wF1 %.2f mF1 %.2f  (%s)",
                mode,
                config.train.seed,
                split,
                100 * metrics["accuracy"],
                100 * metrics["weighted_f1"],
                100 * metrics["macro_f1"],
                run_dir,
            )
            comparison.description = describe(
                base, dataset, sorted({r.seed for r in comparison.runs}), split
            )

        log.info("compare %s: %d runs -> %s", name, len(plan), out)
        run_plan(
            plan,
            partial(train_item, dataset_name=dataset.name),
            record,
            comparison.write,
            desc="compare",
            label=plan_label,
            backend=None if runs else backend,  # given runs are only scored
        )
    return comparison


def train_item(item: PlanItem, dataset_name: str) -> Path:
    """The run directory of a plan item: a given run, or its config trained (or a
    finished run reused) under ``<train.runs_dir>/<dataset_name>``."""
    mode, given = item
    if isinstance(given, Path):
        return given
    log.info("training %s, seed %d", mode, given.train.seed)
    return train_or_reuse(given, train, Path(given.train.runs_dir) / dataset_name)


def plan_label(item: PlanItem) -> str:
    mode, given = item
    return f"{mode} seed {given.train.seed}" if isinstance(given, Config) else f"{mode} {given}"


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
            "Prints the table, then the path of results.md last."
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
    print(comparison.out_dir / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
