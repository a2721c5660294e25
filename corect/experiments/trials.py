"""The search of ``python -m corect.tune`` on Ray Tune (:func:`search`): trials, their
dev curves, and the files that record them (:func:`write_trials`, :func:`write_best`).

Each trial trains the config (overrides included) with its values and the config's seed
and reports dev weighted F1 after every epoch (:func:`run_trial`); trials are judged by
their best dev weighted F1 so far (:data:`METRIC`: what their selected checkpoint
scores), ASHA stops weak ones early, values are drawn at random or by Optuna, and the
first trial is the config's own values when they lie in the space. Test is never scored.
Ray is imported only inside the functions that use it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from corect.common.files import write_atomic, write_json_atomic
from corect.config import Config, ConfigError, load_config
from corect.engine.training import train
from corect.experiments.backends import INSTALL_HINT, RayBackend, WorkerContext
from corect.experiments.runner import fmt_value, markdown_table, training_config
from corect.experiments.space import Param, config_value, overrides_of, plain

log = logging.getLogger("corect.experiments.trials")
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


def search_algorithm(searcher: str, points: list[dict[str, Any]], seed: int) -> Any:
    """Ray Tune's sampler: ``random`` or ``optuna``, trying `points` first."""
    if searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as err:
            raise ConfigError(f"--search optuna needs optuna: {INSTALL_HINT}") from err
        return OptunaSearch(points_to_evaluate=points, seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=points, random_state=seed)


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
    algorithm = search_algorithm(searcher, [] if outside else [start], search_seed)
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
