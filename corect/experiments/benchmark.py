"""The benchmark behind ``python -m corect.benchmark``: several models over several seeds
(and modes), their test scores tabulated.

For every model and seed (and with ``modes=["offline", "causal"]`` in both modes, the
causal runs named ``<model>-causal-seed<k>``) :func:`run_benchmark` calls
:func:`corect.engine.training.train` with the base config plus the model's overrides, then
writes under the output directory (default ``<train.runs_dir>/benchmarks/<name>-<date-time>/``):

- ``results.md``: a Markdown table, test accuracy / weighted F1 / macro F1 as mean ± std
  over seeds (in %), dev weighted F1, parameter count, seconds per epoch, run directories;
- ``results.json``: the same, plus every run's test metrics and the exact overrides;
- ``results.png``: test weighted and macro F1 per model, mean ± std over seeds, every
  seed a dot, offline and causal side by side when both are among the runs, the plain
  references (:data:`corect.models.registry.REFERENCES`) marked
  (:func:`corect.common.plots.benchmark_figure`);
- ``runs/<model>-seed<k>/``: the training runs themselves;
- ``benchmark.log``.

The result files are rewritten (atomically) after every run, so an interrupted
benchmark leaves the finished runs tabulated (``"complete": false``); run it again with
the same output directory and the finished runs (same resolved config) are reused, the run
that was training resumes from its last finished epoch, with the figures of an
uninterrupted run (:mod:`corect.experiments.reuse`). A failing run stops the benchmark
with an error naming the model and seed.
With a Ray backend the runs train as Ray tasks, several at once
(:mod:`corect.experiments.backends`); the files, the reuse, the resuming and the failure
handling are the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from corect.common import plots
from corect.common.errors import INPUT_ERRORS, InputError
from corect.common.files import read_json, write_atomic
from corect.common.metrics import SCORES
from corect.common.runtime import timestamp
from corect.config import MODES, Config, ConfigError, load_config
from corect.experiments.reuse import TrainFn, train_or_reuse
from corect.experiments.runner import (
    Backend,
    experiment_folder,
    experiment_log,
    fmt_mean_std,
    run_plan,
    seed_scores,
    training_config,
)
from corect.models.registry import DEFAULT_VARIANTS, VARIANTS, is_reference

log = logging.getLogger("corect.experiments.benchmark")
DEFAULT_MODELS = DEFAULT_VARIANTS
COLUMNS = {"accuracy": "Acc", "weighted_f1": "wF1", "macro_f1": "macro-F1"}  # of SCORES
PlanItem = tuple[str, int, Config]  # model, seed, the run's config


def model_overrides(name: str) -> tuple[str, ...]:
    """Config overrides of benchmark model `name`; unknown names fail with the list."""
    if name not in VARIANTS:
        raise ConfigError(f"--models: unknown model {name!r}; known models: {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclass
class RunResult:
    """One finished training run."""

    model: str
    seed: int
    run_dir: str
    metrics: dict[str, Any]

    def test(self, key: str) -> float:
        return float(self.metrics["test"][key])

    @property
    def mode(self) -> str:
        """``causal`` or ``offline``, as the run was trained."""
        return "causal" if self.metrics.get("causal") else "offline"

    def to_dict(self) -> dict[str, Any]:
        test = self.metrics.get("test", {})
        dev = self.metrics.get("dev", {})
        return {
            "seed": self.seed,
            "mode": self.mode,
            "run_dir": self.run_dir,
            "test": {k: test[k] for k in SCORES if k in test}
            | {"per_class_f1": test.get("per_class_f1", {})},
            "dev": {k: dev[k] for k in SCORES if k in dev},
            "best_epoch": self.metrics.get("best_epoch"),
            "num_parameters": self.metrics.get("num_parameters"),
            "seconds_per_epoch": self.metrics.get("seconds_per_epoch"),
        }


@dataclass
class Benchmark:
    """Planned runs and their results; renders the table and the JSON."""

    name: str
    out_dir: Path
    config_path: str | None
    overrides: list[str]
    models: list[str]
    seeds: list[int]
    command: str = ""
    results: list[RunResult] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)  # empty: the mode the config says

    @property
    def total_runs(self) -> int:
        return len(self.models) * len(self.seeds) * max(len(self.modes), 1)

    def shown_modes(self) -> list[str | None]:
        """The modes among the results, offline first, or [None] when there is one."""
        modes = plots.present_modes([r.mode for r in self.results])
        return list(modes) if len(modes) > 1 else [None]

    def summary(self, model: str, mode: str | None = None) -> dict[str, Any] | None:
        """Test scores of `model` over seeds (of `mode`'s runs only, when given)."""
        runs = [r for r in self.results if r.model == model and mode in (None, r.mode)]
        if not runs:
            return None
        out = {"seeds": [r.seed for r in runs], **seed_scores([r.metrics for r in runs])}
        out["num_parameters"] = runs[0].metrics.get("num_parameters")
        spe = [r.metrics.get("seconds_per_epoch") for r in runs]
        out["seconds_per_epoch"] = sum(spe) / len(spe) if None not in spe else None
        out["run_dirs"] = [r.run_dir for r in runs]
        heads = [r.metrics.get("modality_heads") for r in runs]
        if heads[0] and all(h and h.keys() == heads[0].keys() for h in heads):
            # In-model distillation: each modality's head alone, over the same seeds.
            out["modality_heads"] = {
                m: {"role": heads[0][m]["role"], **seed_scores([h[m] for h in heads])}
                for m in heads[0]
            }
        return out

    def table(self) -> str:
        """The Markdown table (mean ± sample std over seeds, in %)."""
        header = [
            "Model",
            "Seeds",
            *(f"Test {COLUMNS[key]} (%)" for key in SCORES),
            "Dev wF1 (%)",
            "Params",
            "s/epoch",
            "Runs",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, mode in itertools.product(self.models, self.shown_modes()):
            s = self.summary(model, mode)
            if s is None:
                continue
            params = s["num_parameters"]
            spe = s["seconds_per_epoch"]
            row = [
                f"`{model}`" + (f" {mode}" if mode else ""),
                str(len(s["seeds"])),
                *(fmt_mean_std(s[key]) for key in SCORES),
                fmt_mean_std(s["dev_weighted_f1"]) if s["dev_weighted_f1"] else "-",
                f"{params:,}" if isinstance(params, int) else "-",
                f"{spe:.2f}" if spe is not None else "-",
                ", ".join(f"`{d}`" for d in s["run_dirs"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def heads_table(self) -> str:
        """The Markdown table of in-model distillation's modality heads, each alone
        (empty when no run has them)."""
        header = ["Model", "Head", "Role", "Test Acc (%)", "Test wF1 (%)", "Dev wF1 (%)"]
        lines = []
        for model, mode in itertools.product(self.models, self.shown_modes()):
            s = self.summary(model, mode)
            for m, head in ((s or {}).get("modality_heads") or {}).items():
                dev = head["dev_weighted_f1"]
                row = [
                    f"`{model}`" + (f" {mode}" if mode else ""),
                    m,
                    head["role"],
                    fmt_mean_std(head["accuracy"]),
                    fmt_mean_std(head["weighted_f1"]),
                    fmt_mean_std(dev) if dev else "-",
                ]
                lines.append("| " + " | ".join(row) + " |")
        if not lines:
            return ""
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines])

    def scores(self) -> list[plots.ModelScores]:
        """Test weighted and macro F1 (%) per model and mode, one value per seed."""
        out = []
        modes = plots.present_modes([r.mode for r in self.results])
        for model, mode in itertools.product(self.models, modes):
            runs = [r for r in self.results if r.model == model and r.mode == mode]
            if runs:
                wf1, mf1 = ([100 * r.test(k) for r in runs] for k in ("weighted_f1", "macro_f1"))
                out.append(plots.ModelScores(model, mode, wf1, mf1, is_reference(model)))
        return out

    def figure(self) -> None:
        """Draw results.png (nothing before the first run; a failure only warns)."""
        scores = self.scores()
        if not scores:
            return
        datasets = sorted({str(r.metrics.get("dataset", "?")) for r in self.results})
        data = "" if datasets == [self.name] else f" ({', '.join(datasets)})"
        title = f"Benchmark {self.name}{data}, test split"
        with plots.never_fatal("the benchmark figure"):
            plots.save_figure(plots.benchmark_figure(scores, title), self.out_dir / "results.png")

    def to_dict(self, complete: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "complete": complete,
            "command": self.command,
            "config": self.config_path,
            "overrides": self.overrides,
            "seeds": self.seeds,
            "modes": self.modes,
            "models": {
                model: {
                    "overrides": list(model_overrides(model)),
                    # With runs of both modes, "summary" is None and "by_mode" has both.
                    "summary": self.summary(model) if self.shown_modes() == [None] else None,
                    "by_mode": {
                        mode: self.summary(model, mode)
                        for mode in plots.present_modes([r.mode for r in self.results])
                    },
                    "runs": [r.to_dict() for r in self.results if r.model == model],
                }
                for model in self.models
            },
            "std": "sample standard deviation over seeds (0 with one seed); figures in %",
        }

    def write(self, complete: bool) -> None:
        """Rewrite results.md, results.json and results.png atomically."""
        title = f"# Benchmark {self.name}\n\n"
        if self.command:
            title += f"Command: `{self.command}`\n\n"
        if not complete:
            title += f"**Incomplete: {len(self.results)}/{self.total_runs} runs.**\n\n"
        note = "\n\nMean ± sample std over seeds; test figures at the best dev epoch.\n"
        heads = self.heads_table()
        if heads:
            note += "\nEach modality's head alone (in-model distillation):\n\n" + heads + "\n"
        write_atomic(self.out_dir / "results.md", title + self.table() + note)
        write_atomic(
            self.out_dir / "results.json", json.dumps(self.to_dict(complete), indent=1) + "\n"
        )
        self.figure()


def run_config(
    config_path: str | None,
    overrides: Sequence[str],
    model: str,
    seed: int,
    runs_dir: Path,
    mode: str | None = None,
) -> Config:
    """The config of benchmark model `model` with `seed`, run under `runs_dir`, in `mode`
    (``offline`` or ``causal``; None: as the config says)."""
    extra = list(model_overrides(model))
    if mode is not None:
        if mode not in MODES:
            raise ConfigError(f"--modes: unknown mode {mode!r}; use {' or '.join(MODES)}")
        extra.append(f"model.causal={'true' if mode == 'causal' else 'false'}")
    name = f"{model}-causal-seed{seed}" if mode == "causal" else f"{model}-seed{seed}"
    return training_config(config_path, overrides, extra, seed, name, runs_dir)


def check_choices(models: Sequence[str], seeds: Sequence[int], modes: Sequence[str]) -> None:
    """At least one model and seed, no model or mode named twice."""
    if not models:
        raise ConfigError("--models: give at least one model")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(models)) != len(models):
        raise ConfigError(f"--models: duplicate model names in {','.join(models)}")
    if len(set(modes)) != len(modes):
        raise ConfigError(f"--modes: duplicate modes in {','.join(modes)}")


def plan_runs(
    config_path: str | None,
    overrides: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    modes: Sequence[str],
    out: Path,
) -> list[PlanItem]:
    """Every run's config, built and validated, under ``out/runs``: model by model, mode
    by mode, seed by seed."""
    return [
        (m, s, run_config(config_path, overrides, m, s, out / "runs", mode))
        for m in models
        for mode in (modes or [None])
        for s in seeds
    ]


def run_benchmark(
    config_path: str | None,
    models: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    name: str | None = None,
    *,
    command: str = "",
    train_fn: TrainFn | None = None,
    modes: Sequence[str] = (),
    backend: Backend | None = None,
) -> Benchmark:
    """Train every model with every seed (in each of `modes`: offline, causal; by default
    the config's mode); write and return the results.

    Every run's config is built and validated before anything is made, so a typo in a
    model name or an override fails at once. `out_dir` (default: a new folder
    ``<train.runs_dir>/benchmarks/<name>-<date-time>``) may hold an earlier benchmark,
    whose finished runs are reused and unfinished ones resumed. `train_fn` (called as
    ``train_fn(config)`` and ``train_fn(config, resume=RUN_DIR)``) defaults to
    :func:`corect.engine.training.train`; `backend` (default: this process, one run after
    another) says where runs train.
    """
    check_choices(models, seeds, modes)
    name = name or (Path(config_path).stem if config_path else "synthetic")
    parent = Path(load_config(config_path, list(overrides)).train.runs_dir) / "benchmarks"
    checked = Path(out_dir) if out_dir else parent / name
    plan = plan_runs(config_path, overrides, models, seeds, modes, checked)  # before any folder
    out = experiment_folder(out_dir, parent, f"{name}-{timestamp()}")
    if out != checked:
        plan = plan_runs(config_path, overrides, models, seeds, modes, out)
    if train_fn is None:
        from corect.engine.training import train as train_fn
    bench = Benchmark(
        name, out, config_path, list(overrides), list(models), list(seeds), command, modes=[*modes]
    )
    bench.write(complete=False)
    with experiment_log(out / "benchmark.log"):  # benchmark and training logs
        log.info("benchmark %s: %d models x %d seeds -> %s", name, len(models), len(seeds), out)
        run_plan(
            plan,
            partial(train_item, train_fn=train_fn, runs_dir=out / "runs"),
            partial(record_run, bench, plan, {}),
            bench.write,
            desc="benchmark",
            label=lambda item: item[2].train.run_name,  # <model>[-causal]-seed<k>
            failed=run_failed,
            backend=backend,
        )
        log.info("results: %s and %s", out / "results.md", out / "results.json")
    return bench


def record_run(
    bench: Benchmark,
    plan: list[PlanItem],
    done: dict[int, RunResult],
    position: int,
    output: tuple[Path, float],
) -> None:
    """Add the finished run at `position` of `plan` to `bench`'s results, kept in plan
    order whatever ran them (`done`: the results so far, by position)."""
    model, seed, _ = plan[position]
    done[position] = read_run(model, seed, *output, bench.out_dir)
    bench.results = [done[k] for k in sorted(done)]


def train_item(item: PlanItem, train_fn: TrainFn, runs_dir: Path) -> tuple[Path, float]:
    """Train one planned run (or reuse or resume an earlier one under `runs_dir`),
    wherever the backend runs it: its directory and the seconds it took."""
    model, seed, config = item
    log.info("run %s seed %d: %s", model, seed, " ".join(model_overrides(model)))
    start = time.perf_counter()
    run_dir = train_or_reuse(config, train_fn, runs_dir)
    return run_dir, time.perf_counter() - start


def read_run(model: str, seed: int, run_dir: Path, seconds: float, out: Path) -> RunResult:
    """The RunResult of a finished run directory (its metrics.json), logged."""
    metrics = read_json(run_dir / "metrics.json")
    test = metrics.get("test") if isinstance(metrics, dict) else None
    missing = [k for k in SCORES if not isinstance(test, dict) or k not in test]
    if missing:
        raise InputError(f"{run_dir / 'metrics.json'}: test metrics {missing} missing")
    try:
        shown = str(run_dir.resolve().relative_to(out.resolve()))
    except ValueError:
        shown = str(run_dir)
    result = RunResult(model, seed, shown, metrics)
    log.info(
        "done %s seed %d in %.0fs: test wF1 %.2f%%, acc %.2f%%",
        model,
        seed,
        seconds,
        100 * result.test("weighted_f1"),
        100 * result.test("accuracy"),
    )
    return result


def run_failed(item: PlanItem, err: Exception) -> Exception:
    """The error that stops the benchmark, naming the model and seed that failed. Bad input
    (a diverged run, a bad file) stays an input error: one line, exit 2."""
    model, seed, _ = item
    log.error("model %s seed %d failed: %s", model, seed, err)
    kind = InputError if isinstance(err, INPUT_ERRORS) else RuntimeError
    return kind(f"benchmark: model {model!r} (seed {seed}) failed: {err}")
