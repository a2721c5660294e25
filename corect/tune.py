"""Hyperparameter search on Ray Tune: ``python -m corect.tune --config CONFIG --space
SPACE.yaml --trials N`` (the space format: :mod:`corect.experiments.space`).

Each trial trains CONFIG (``--set`` included) with its values and the config's seed and
reports dev weighted F1 after every epoch; trials are judged by their best dev weighted
F1 so far (what their selected checkpoint scores), ASHA stops weak ones early, values
are drawn at random or by Optuna (``--search optuna``), and the first trial is CONFIG's
own values when they lie in the space. Test is never scored during the search. Then the
best config and CONFIG (unless ``--no-base``) train with ``--seeds`` seeds and are
scored on test. Under ``--out`` (default ``<train.runs_dir>/tune/<name>-<date-time>/``):
``best.yaml`` (the best trial's config, a normal config file); ``trials.csv``, ``.md``,
``.json`` (every trial, best first: values, best dev weighted F1 and epoch, epochs run,
how it ended; JSON: the dev curves); ``results.md``, ``.json`` (test and dev mean ± std
over seeds per config); ``tune.log``; the runs in ``trials/`` and ``final/``; Ray Tune's
records in ``ray-tune/``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from corect.common.errors import INPUT_ERRORS, report
from corect.common.files import write_atomic, write_json_atomic
from corect.common.runtime import keep_freed_memory
from corect.config import Config, ConfigError, load_config
from corect.engine.training import train
from corect.experiments.backends import (
    INSTALL_HINT,
    RayBackend,
    WorkerContext,
    add_backend_arguments,
    backend_from_args,
    require_ray,
)
from corect.experiments.runner import (
    SCORES,
    add_plan_arguments,
    command_line,
    experiment_log,
    fmt_mean_std,
    fmt_value,
    markdown_table,
    parse_seeds,
    run_plan,
    seed_scores,
    train_or_reuse,
    training_config,
)
from corect.experiments.space import Param, config_value, load_space, overrides_of, plain

log = logging.getLogger("corect.tune")
METRIC = "best_dev_weighted_f1"  # reported every epoch; ASHA and the choice use it


@dataclass(frozen=True)
class TrialSetup:
    """What every trial takes from the driver."""

    config_path: str | None
    overrides: tuple[str, ...]
    runs_dir: str
    context: WorkerContext

    def config(self, values: dict[str, Any], name: str) -> Config:
        """A trial's config: no figures unless asked, its values, run `name`."""
        overrides = ["train.figures=false", *self.overrides]
        seed = load_config(self.config_path, overrides).train.seed
        extra, runs_dir = overrides_of(values), Path(self.runs_dir)
        return training_config(self.config_path, overrides, extra, seed, name, runs_dir)


def run_trial(values: dict[str, Any], setup: TrialSetup) -> None:
    """One trial, in a Ray Tune worker: train, report dev figures after every epoch,
    never score test."""
    from ray import tune

    with setup.context.applied():
        config = setup.config(values, f"trial-{tune.get_context().get_trial_id()}")
        train(config, on_epoch=tune.report, test=False)


@dataclass
class Trial:
    """One trial: its values, the dev figures it reported per epoch, how it ended."""

    name: str
    values: dict[str, Any]
    history: list[dict[str, Any]]
    ended: str

    @property
    def best(self) -> float:
        """Its best dev weighted F1 (-inf when it reported nothing)."""
        return max((h[METRIC] for h in self.history), default=-math.inf)

    def row(self) -> dict[str, Any]:
        return {
            "trial": self.name,
            **{key: plain(value) for key, value in self.values.items()},
            METRIC: self.best if self.history else None,
            "best_epoch": self.history[-1]["best_epoch"] if self.history else None,
            "epochs": len(self.history),
            "ended": self.ended,
        }


def ending(history: list[dict[str, Any]], error: Any, config: Config) -> str:
    """completed, early stopping (the config's), stopped by ASHA, or the error."""
    if error:
        return f"error: {str(error).strip().splitlines()[-1]}"
    last, cfg = (history or [{"epoch": 0, "best_epoch": 0}])[-1], config.train
    if last["epoch"] >= cfg.epochs:
        return "completed"
    if cfg.early_stopping and last["epoch"] - last["best_epoch"] >= cfg.early_stopping:
        return "early stopping"
    return "stopped by ASHA"


def collect_trials(results: Any, setup: TrialSetup) -> list[Trial]:
    """The trials of a Ray Tune ResultGrid, best first (ties: the earlier trial)."""
    keep = ("epoch", "dev_weighted_f1", METRIC, "best_epoch", "dev_loss", "train_loss")
    trials = []
    for number, result in enumerate(results):
        frame = result.metrics_dataframe
        records = [] if frame is None or METRIC not in frame else frame.to_dict("records")
        history = [{k: plain(r[k]) for k in keep} for r in records]
        name = str(result.metrics.get("trial_id") or f"#{number}")
        ended = ending(history, result.error, setup.config(result.config, f"trial-{name}"))
        trials.append(Trial(name, result.config, history, ended))
    return sorted(trials, key=lambda t: -t.best)  # stable: ties keep the earlier trial


def progress(total: int) -> Any:
    """A Ray Tune callback: a progress bar over trials, and a log line per trial."""
    from ray import tune

    class Progress(tune.Callback):
        bar: Any = None  # made at the first trial's end: Tune pickles its callbacks

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            result = trial.last_result or {}
            score, epochs = 100 * result.get(METRIC, math.nan), result.get("epoch", 0)
            log.info("trial %s: best dev wF1 %.2f%% in %d epochs", trial.trial_id, score, epochs)
            self.bar = self.bar or tqdm(
                total=total, desc="trials", unit="trial", dynamic_ncols=True
            )
            self.bar.update()

        on_trial_error = on_trial_complete

        def on_experiment_end(self, trials: Any, **info: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return Progress()


def search(
    config_path: str | None,
    params: list[Param],
    trials: int,
    overrides: Sequence[str],
    out: Path,
    backend: RayBackend,
    *,
    searcher: str = "random",
    grace_epochs: int = 5,
    search_seed: int = 0,
) -> list[Trial]:
    """Run `trials` trials on Ray Tune with ASHA, Ray being started; return them, best
    first. The config's own values are the first trial when they lie in the space."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = load_config(config_path, list(overrides))
    start = {p.key: config_value(base, p.key) for p in params}
    outside = [p.key for p in params if not p.contains(start[p.key])]
    if outside:
        log.warning("no base trial: the config's %s lie outside the space", ", ".join(outside))
    points = [] if outside else [start]
    if searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as err:
            raise ConfigError(f"--search optuna needs optuna: {INSTALL_HINT}") from err
        algorithm: Any = OptunaSearch(points_to_evaluate=points, seed=search_seed)
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        algorithm = BasicVariantGenerator(points_to_evaluate=points, random_state=search_seed)
    epochs = base.train.epochs
    # A trial that reaches the last epoch finishes normally (stop_last_trials=False).
    scheduler = ASHAScheduler(
        max_t=epochs,
        grace_period=min(grace_epochs, epochs),
        reduction_factor=3,
        stop_last_trials=False,
    )
    log.info("search: %d trials over %s on %s", trials, ", ".join(start), backend.describe())
    context = WorkerContext.here(backend.cpus_per_run)
    setup = TrialSetup(config_path, tuple(overrides), str((out / "trials").resolve()), context)
    resources = {"cpu": backend.cpus_per_run, "gpu": backend.gpus_per_run}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources),
        param_space={p.key: p.sampler() for p in params},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=trials,
            search_alg=algorithm,
            scheduler=scheduler,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="ray-tune",
            storage_path=str(out.resolve()),
            verbose=0,  # the progress bar and the log say enough
            callbacks=[progress(trials)],
        ),
    )
    found = collect_trials(tuner.fit(), setup)
    if not found[0].history:
        errors = sorted({t.ended for t in found})
        raise RuntimeError(f"tune: no trial reported a dev score: {'; '.join(errors)}")
    return found


def write_trials(trials: list[Trial], out: Path) -> None:
    """trials.csv, trials.md and trials.json (with every trial's dev curve), best first."""
    rows = [t.row() for t in trials]
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: fmt_value(v) for k, v in row.items()} for row in rows)
    write_atomic(out / "trials.csv", text.getvalue())
    header = f"# Trials, best first ({METRIC}: dev weighted F1 of the selected epoch)\n\n"
    write_atomic(out / "trials.md", header + markdown_table(rows) + "\n")
    data = [{**t.row(), "history": t.history} for t in trials]
    write_json_atomic(out / "trials.json", {"metric": METRIC, "trials": data})


def write_best(best: Trial, config_path: str | None, overrides: Sequence[str], out: Path) -> Path:
    """best.yaml: the config with the best trial's values, as a normal config file."""
    config = load_config(config_path, [*overrides, *overrides_of(best.values)])
    chosen = ", ".join(f"{k}={fmt_value(plain(v))}" for k, v in best.values.items())
    header = (
        f"# Chosen by python -m corect.tune on dev weighted F1 (test never scored): trial\n"
        f"# {best.name}, {100 * best.best:.2f}%; base {config_path or 'built-in defaults'}; "
        f"searched: {chosen}\n"
    )
    path = out / "best.yaml"
    write_atomic(path, header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


FinalItem = tuple[str, int, Config]  # label (best, base), seed, the run's config


def train_final(item: FinalItem, runs_dir: Path) -> Path:
    """Train a chosen config with one seed (or reuse its finished run)."""
    return train_or_reuse(item[2], train, runs_dir)


@dataclass
class Final:
    """The chosen configs (label -> config file and overrides) trained with several seeds,
    and what the search found (`search`: name, command, trials, best trial, its score)."""

    out: Path
    configs: dict[str, tuple[str | None, list[str]]]
    search: dict[str, Any]
    runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # label, metrics

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per config: seeds, test and dev scores (mean ± std over seeds, %), runs."""
        out = {}
        for label, (path, overrides) in self.configs.items():
            runs = [m for lab, m in self.runs if lab == label]
            out[label] = {
                "config": path,
                "overrides": overrides,
                "seeds": [m["seed"] for m in runs],
                **(seed_scores(runs) if runs else {}),
                "run_dirs": [m["run_dir"] for m in runs],
            }
        return out

    def markdown(self, complete: bool = True) -> str:
        s = self.search
        text = f"# Tuning {s['name']}\n\nCommand: `{s['command']}`\n\n{s['trials']} trials, "
        text += f"chosen on dev weighted F1: trial {s['best_trial']}, "
        text += f"{s['best_dev_weighted_f1']:.2f}%{' (the config as given)' * s['base_is_best']}"
        text += "\n\n" if complete else "\n\n**Incomplete.**\n\n"
        rows = [
            {
                "Config": f"{label} (`{v['config']}`)",
                "Seeds": len(v["seeds"]),
                **{f"Test {k} (%)": fmt_mean_std(v[k]) for k in SCORES},
                "Dev weighted_f1 (%)": fmt_mean_std(v["dev_weighted_f1"]),
            }
            for label, v in self.summary().items()
            if v["seeds"]
        ]
        table = markdown_table(rows) if rows else "(no run finished yet)"
        return text + table + "\n\nMean ± sample std over seeds.\n"

    def write(self, complete: bool) -> None:
        write_atomic(self.out / "results.md", self.markdown(complete))
        data = {"complete": complete, "search": self.search, "configs": self.summary()}
        write_json_atomic(self.out / "results.json", data)


def train_chosen(final: Final, seeds: Sequence[int], backend: RayBackend) -> None:
    """Train every config of `final` with every seed on `backend`, writing as runs end."""
    runs_dir, done = final.out / "final", {}
    plan: list[FinalItem] = [
        (label, s, training_config(path, overrides, [], s, f"{label}-seed{s}", runs_dir))
        for label, (path, overrides) in final.configs.items()
        for s in seeds
    ]

    def record(position: int, run_dir: Path) -> None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        done[position] = (plan[position][0], {**metrics, "run_dir": str(run_dir)})
        final.runs = [done[k] for k in sorted(done)]

    work = partial(train_final, runs_dir=runs_dir)
    label = lambda item: item[2].train.run_name  # noqa: E731
    run_plan(plan, work, record, final.write, desc="final", label=label, backend=backend)


def run_tune(
    config_path: str | None,
    space_path: str | Path,
    trials: int,
    overrides: Sequence[str] = (),
    *,
    seeds: Sequence[int] = (1, 2, 3),
    out_dir: str | Path | None = None,
    name: str | None = None,
    backend: RayBackend | None = None,
    with_base: bool = True,
    command: str = "",
    **search_options: Any,
) -> Final:
    """Search (`search_options`: see :func:`search`), write the trials and best.yaml,
    train the best config (and the base one) with `seeds`; return the final results."""
    ray = require_ray("python -m corect.tune")
    if trials < 1 or not seeds or search_options.get("grace_epochs", 1) < 1:
        raise ConfigError("--trials, --grace-epochs and the seeds: at least 1")
    params = load_space(space_path, config_path, overrides)
    base = load_config(config_path, list(overrides))
    name = name or (Path(config_path).stem if config_path else "synthetic")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path(base.train.runs_dir) / "tune" / f"{name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    backend = backend or RayBackend()
    started = backend.start()
    try:
        with experiment_log(out / "tune.log"):
            found = search(config_path, params, trials, overrides, out, backend, **search_options)
            write_trials(found, out)
            best = write_best(found[0], config_path, overrides, out)
            log.info("best trial %s: dev wF1 %.2f%%, %s", found[0].name, 100 * found[0].best, best)
            same = load_config(best).to_dict() == base.to_dict()
            configs = {"best": (str(best), [])}
            if with_base and not same:
                configs["base"] = (config_path, list(overrides))
            search_info = {
                "name": name,
                "command": command,
                "trials": len(found),
                "best_trial": found[0].name,
                "best_dev_weighted_f1": 100 * found[0].best,
                "base_is_best": same,
            }
            final = Final(out, configs, search_info)
            final.write(complete=False)
            train_chosen(final, seeds, backend)
    finally:
        if started:
            ray.shutdown()
    return final


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m corect.tune",
        description=(
            "Search a YAML space of config values on Ray Tune by dev weighted F1 (ASHA stops\n"
            "weak trials; test is never scored); write best.yaml and the trials table, then\n"
            "train the best config and CONFIG with the seeds; print results.md's path last."
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
    print(final.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
