"""Offline vs causal, behind ``python -m corect.compare_modes``: the same model trained
twice per seed, with the same data, config and seed, once offline (``model.causal:
false``) and once causal (``model.causal: true``: no prediction depends on a later
utterance), or runs trained before, scored and compared.

Both modes' runs land in the usual runs directory, side by side in TensorBoard::

    runs/<dataset>/<modalities>--<task>--<model>/<name>-<date-time>-seed<k>/
    runs/<dataset>/<modalities>--<task>--<model>-causal/<name>-<date-time>-seed<k>/

Every run's best checkpoint is scored on the test split (:func:`corect.engine.scoring.score_run`,
as ``corect.evaluate`` does) and the comparison is written, atomically and after every
run, under ``<train.runs_dir>/compare/<name>-<date-time>/``:

- ``results.md``: accuracy, weighted F1, macro F1 and per-class F1 per mode (mean ± sample
  std over seeds, in %), the difference causal - offline, and weighted F1 by position in
  the dialogue (utterances 1-5, 6-10, 11-20, 21+: early utterances have little past);
- ``results.json``: the same, plus every run's figures and directory;
- ``results.png``: weighted F1 by position in the dialogue for both modes (mean and
  ± std band over seeds, every seed a dot) and the per-class F1 difference causal -
  offline (:func:`corect.common.plots.modes_figure`), once both modes have a run;
- ``compare.log``: the log, training included.

Run again with the same ``--out``, the comparison trains the runs of the same names: the
finished ones are reused and the one that was training resumes from its last finished
epoch (:mod:`corect.experiments.reuse`). With a Ray backend the runs train as Ray tasks,
several at once (:mod:`corect.experiments.backends`); everything else is the same.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from corect.common import plots
from corect.common.files import write_atomic
from corect.common.metrics import POSITION_BUCKETS, SCORE_NAMES, SCORES
from corect.common.runtime import timestamp
from corect.config import MODES, Config, ConfigError
from corect.data.dataset import Dataset
from corect.data.format import DatasetError
from corect.engine.checkpoints import load_data, load_run
from corect.engine.scoring import score_run
from corect.engine.training import train
from corect.experiments.reuse import recorded_run_name, train_or_reuse
from corect.experiments.runner import (
    Backend,
    check_comparable,
    experiment_folder,
    experiment_log,
    fmt_mean_std,
    mean_std,
    run_plan,
    training_config,
)

log = logging.getLogger("corect.experiments.compare")
PlanItem = tuple[str, Config | Path]  # mode, the run's config (or a trained run)


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
    run_name: str = ""  # the trained runs' names, <run_name>-seed<k>; "" for given runs

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
        rows = {key: self.row(lambda m, k=key: m[k]) for key in SCORES}
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
        names = [
            *((k, SCORE_NAMES[k]) for k in SCORES),
            *((f"f1/{c}", f"F1 {c}") for c in self.labels),
        ]
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
            "run_name": self.run_name,
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


def given_plan(runs: Sequence[str], causal_runs: Sequence[str]) -> list[PlanItem]:
    """The runs trained before, offline ones first; each run counts once."""
    if not (runs and causal_runs):
        raise ConfigError("give both --runs (offline) and --causal-runs")
    plan: list[PlanItem] = [("offline", Path(r)) for r in runs]
    plan += [("causal", Path(r)) for r in causal_runs]
    given: dict[Path, str] = {}
    for mode, run_dir in plan:
        if run_dir.resolve() in given:
            raise ConfigError(
                f"{run_dir} is given twice (as {given[run_dir.resolve()]} and {mode}); "
                "each run counts once"
            )
        given[run_dir.resolve()] = mode
    return plan


def trained_plan(
    config_path: str | None, overrides: Sequence[str], seeds: Sequence[int], run_name: str
) -> list[PlanItem]:
    """Both modes of every seed, every run's config built and validated before the first
    one trains."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    return [
        (mode, mode_config(config_path, overrides, mode, seed, run_name))
        for seed in seeds
        for mode in MODES
    ]


@dataclass
class Scoring:
    """Scores each finished run of `plan` into `comparison` (kept in plan order), after
    checking that its mode is the one it was given as, that no other run of its mode has
    its seed, and that it trained on the same data and model as the others."""

    comparison: Comparison
    plan: list[PlanItem]
    dataset: Dataset
    base: Config
    configs: dict[str, Config] = field(default_factory=dict)
    done: dict[int, ModeRun] = field(default_factory=dict)

    def record(self, position: int, run_dir: Path) -> None:
        mode, split = self.plan[position][0], self.comparison.split
        config, _, metrics = score_run(run_dir, self.dataset, split)
        expected = mode == "causal"
        if config.model.causal != expected:
            raise ConfigError(
                f"{run_dir}: model.causal={config.model.causal}, but it was given as "
                f"{'a causal' if expected else 'an offline'} run"
            )
        seed = config.train.seed
        twin = [r.run_dir for r in self.comparison.runs if (r.mode, r.seed) == (mode, seed)]
        if twin:
            raise ConfigError(
                f"{run_dir}: {mode} run with seed {seed}, like {twin[0]}; "
                "runs of one seed are not independent: give runs of distinct seeds"
            )
        self.configs[str(run_dir)] = config
        check_comparable(self.configs)
        self.done[position] = ModeRun(mode, seed, str(run_dir), metrics)
        self.comparison.runs = [self.done[k] for k in sorted(self.done)]
        log.info(
            "%s seed %d: %s acc %.2f wF1 %.2f mF1 %.2f  (%s)",
            mode,
            seed,
            split,
            *(100 * metrics[key] for key in SCORES),
            run_dir,
        )
        seeds = sorted({r.seed for r in self.comparison.runs})
        self.comparison.description = describe(self.base, self.dataset, seeds, split)


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
    train on `backend` (default: here, one after another); scoring is done here.
    `out_dir` defaults to a new folder ``<train.runs_dir>/compare/<name>-<date-time>``."""
    name = name or (Path(config_path).stem if config_path else "synthetic")
    stamp, run_name = timestamp(), ""
    if runs or causal_runs:
        plan = given_plan(runs, causal_runs)
        base = load_run(plan[0][1])[0]
    else:
        run_name = recorded_run_name(out_dir, name) or f"{name}-{stamp}"
        plan = trained_plan(config_path, overrides, seeds, run_name)
        base = plan[0][1]
    out = experiment_folder(out_dir, Path(base.train.runs_dir) / "compare", f"{name}-{stamp}")
    with experiment_log(out / "compare.log"):
        dataset = load_data(base)
        if split not in dataset.splits:
            raise DatasetError(f"split {split!r} not in dataset {dataset.path}")
        comparison = Comparison(
            name, out, list(dataset.labels), len(plan), split, command=command, run_name=run_name
        )
        if run_name:
            comparison.write(complete=False)  # the run names, for a rerun with this --out
        log.info("compare %s: %d runs -> %s", name, len(plan), out)
        run_plan(
            plan,
            partial(train_item, dataset_name=dataset.name),
            Scoring(comparison, plan, dataset, base).record,
            comparison.write,
            desc="compare",
            label=plan_label,
            backend=None if runs else backend,  # given runs are only scored
        )
    return comparison


def train_item(item: PlanItem, dataset_name: str) -> Path:
    """The run directory of a plan item: a given run, or its config trained (or an
    earlier run reused or resumed) under ``<train.runs_dir>/<dataset_name>``."""
    mode, given = item
    if isinstance(given, Path):
        return given
    log.info("training %s, seed %d", mode, given.train.seed)
    return train_or_reuse(given, train, Path(given.train.runs_dir) / dataset_name)


def plan_label(item: PlanItem) -> str:
    mode, given = item
    return f"{mode} seed {given.train.seed}" if isinstance(given, Config) else f"{mode} {given}"
