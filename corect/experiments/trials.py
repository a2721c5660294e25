"""The search of ``python -m corect.tune`` on Ray Tune (:func:`search`): trials, their
dev curves, and the files that record them (:func:`write_trials`, :func:`write_best`).

Each trial trains the config (overrides included) with its values and the config's seed
and reports dev weighted F1 after every epoch (:func:`run_trial`); trials are judged by
their best dev weighted F1 so far (:data:`METRIC`: what their selected checkpoint
scores), ASHA stops weak ones early, values are drawn at random or by Optuna, and the
first trial is the config's own values when they lie in the space. Test is never scored.

Nothing a trial trained is lost: every epoch's report carries a Ray Tune checkpoint, the
trial's run folder with its training state (:func:`report_epoch`; Tune keeps the latest).
A trial that Tune restarts (a failed trial, up to :data:`TRIAL_RETRIES` times: a lost
worker, a preempted node; or a restored experiment) gets its run folder back as of that
checkpoint and resumes from its last reported epoch (:func:`run_trial`). Run again with
the same output folder, the search restores the interrupted one (``Tuner.restore``):
finished trials are kept, unfinished and failed ones continue from their last epoch; a
search with other settings (:data:`SETTINGS`) is refused. Ray is imported only inside the
functions that use it.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from corect.common.files import atomic_target, read_json, write_atomic, write_json_atomic
from corect.config import Config, ConfigError, load_config
from corect.engine.checkpoints import load_data, run_directory, write_run_status
from corect.engine.training import EpochCallback, train
from corect.experiments.backends import INSTALL_HINT, RayBackend, WorkerContext
from corect.experiments.runner import fmt_value, markdown_table, training_config
from corect.experiments.space import Param, config_value, overrides_of, plain

log = logging.getLogger("corect.experiments.trials")
METRIC = "best_dev_weighted_f1"  # reported every epoch; ASHA and the choice use it
TRIAL_RETRIES = 2  # times Tune restarts a failed trial from its last checkpoint
SETTINGS = "search.json"  # what the search in an output folder was run with


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

    def reporter(self, config: Config) -> EpochCallback:
        """What the trial of `config` calls after every epoch (:func:`report_epoch`)."""
        return partial(report_epoch, config=config)


def run_trial(values: dict[str, Any], setup: TrialSetup) -> None:
    """One trial, in a Ray Tune worker: train, or resume from the trial's Tune checkpoint
    when it has one; report dev figures and a checkpoint after every epoch; never score
    test."""
    from ray import tune

    with setup.context.applied():
        config = setup.config(values, f"trial-{tune.get_context().get_trial_id()}")
        checkpoint, resume = tune.get_checkpoint(), None
        if checkpoint is None:
            drop_attempts(config)
        else:
            with checkpoint.as_directory() as saved:
                resume = restore_trial(Path(saved), config)
        train(config, on_epoch=setup.reporter(config), test=False, resume=resume)


def trial_folders(config: Config) -> list[Path]:
    """The run folders of a trial (named after it) under its runs directory."""
    name = glob.escape(config.train.run_name or "")
    return sorted(Path(config.train.runs_dir).glob(f"*/*/{name}"))


def report_epoch(figures: dict[str, float], config: Config) -> None:
    """Report an epoch's figures to Ray Tune with the trial's run folder (its training
    state written for this epoch) as the checkpoint, which Tune copies to its storage."""
    from ray import tune

    (run_dir,) = trial_folders(config)
    tune.report(figures, checkpoint=tune.Checkpoint.from_directory(str(run_dir)))


def drop_attempts(config: Config) -> None:
    """Remove what an attempt of a trial left before it reported its first epoch: the
    trial starts over, under its own name."""
    for run_dir in trial_folders(config):
        log.info("removing %s: an attempt that reported no epoch; starting over", run_dir)
        shutil.rmtree(run_dir)


def restore_trial(saved: Path, config: Config) -> Path:
    """The run folder of the trial of `config` made as its Tune checkpoint `saved` holds
    it (in its place, or where training puts it when it is gone); resume from there."""
    found = trial_folders(config)
    run_dir = found[0] if found else run_directory(config, load_data(config))
    mirror(saved, run_dir)
    # Its run.json, as saved, names a process that may still live (Tune reuses workers).
    write_run_status(run_dir, "stopped", error="restarted by Ray Tune from its checkpoint")
    log.info("resuming trial %s from its Tune checkpoint in %s", config.train.run_name, run_dir)
    return run_dir


def mirror(source: Path, target: Path) -> None:
    """Make folder `target` hold exactly the files of `source`, each replaced atomically
    (mirroring again after a kill completes it)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        if path.is_file():
            with atomic_target(target / path.relative_to(source)) as tmp:
                shutil.copyfile(path, tmp)
    for path in sorted(target.rglob("*"), reverse=True):  # files before their folders
        if not (source / path.relative_to(target)).exists():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


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
        # One record per epoch: a trial restored from a checkpoint reports again what it
        # reported after that checkpoint.
        by_epoch = {int(r["epoch"]): {k: plain(r[k]) for k in keep} for r in records}
        history = [by_epoch[epoch] for epoch in sorted(by_epoch)]
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
    """Run `trials` trials on Ray Tune with ASHA, Ray being started (or continue the
    search that `out` holds, run with the same settings); return them, best first. The
    config's own values are the first trial when they lie in the space."""
    from ray import tune

    base = load_config(config_path, list(overrides))
    settings = {
        "config": base.to_dict(),
        "space": [[p.key, p.kind, p.args] for p in params],
        "trials": trials,
        "search": searcher,
        "grace_epochs": grace_epochs,
        "search_seed": search_seed,
    }
    context = WorkerContext.here(backend.cpus_per_run)
    setup = TrialSetup(config_path, tuple(overrides), str((out / "trials").resolve()), context)
    resources = {"cpu": backend.cpus_per_run, "gpu": backend.gpus_per_run}
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)
    path = str((out / "ray-tune").resolve())
    if tune.Tuner.can_restore(path):
        check_settings(out, settings)
        log.info("search: continuing the one in %s (finished trials kept)", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        if Path(path).exists():  # killed before Tune first saved the experiment's state
            log.warning("warning: %s cannot be restored; the search starts anew", path)
        write_json_atomic(out / SETTINGS, settings)
        keys = ", ".join(p.key for p in params)
        log.info("search: %d trials over %s on %s", trials, keys, backend.describe())
        tuner = new_tuner(trainable, params, base, out, settings)
    found = collect_trials(tuner.fit(), setup)
    if not found[0].history:
        errors = sorted({t.ended for t in found})
        raise RuntimeError(f"tune: no trial reported a dev score: {'; '.join(errors)}")
    return found


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to continue the search in `out` with other settings than it was run with
    (its :data:`SETTINGS` file), naming what differs."""
    path = out / SETTINGS
    if not path.is_file():
        log.warning("warning: %s is missing: cannot check the search's settings", path)
        return
    saved, now = read_json(path), json.loads(json.dumps(settings))
    saved = saved if isinstance(saved, dict) else {}
    differ = [k for k in now if k != "config" and saved.get(k) != now[k]]
    old = saved.get("config") or {}
    differ += [
        f"{section}.{key}"
        for section, values in now["config"].items()
        for key, value in values.items()
        if (old.get(section) or {}).get(key) != value
    ]
    if differ:
        raise ConfigError(
            f"{out} holds a search run with other settings ({', '.join(differ)} differ, see "
            f"{path}); run it with the same ones to continue it, or give another --out"
        )


def new_tuner(
    trainable: Any, params: list[Param], base: Config, out: Path, settings: dict[str, Any]
) -> Any:
    """A Ray Tune Tuner for the search `settings` describe: ASHA, the sampler, a
    checkpoint kept per trial, failed trials restarted from it."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    start = {p.key: config_value(base, p.key) for p in params}
    outside = [p.key for p in params if not p.contains(start[p.key])]
    if outside:
        log.warning("no base trial: the config's %s lie outside the space", ", ".join(outside))
    algorithm = search_algorithm(
        settings["search"], [] if outside else [start], settings["search_seed"]
    )
    epochs = base.train.epochs
    # A trial that reaches the last epoch finishes normally (stop_last_trials=False).
    scheduler = ASHAScheduler(
        max_t=epochs,
        grace_period=min(settings["grace_epochs"], epochs),
        reduction_factor=3,
        stop_last_trials=False,
    )
    return tune.Tuner(
        trainable,
        param_space={p.key: p.sampler() for p in params},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=settings["trials"],
            search_alg=algorithm,
            scheduler=scheduler,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="ray-tune",
            storage_path=str(out.resolve()),
            verbose=0,  # the progress bar and the log say enough
            callbacks=[progress(settings["trials"])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
        ),
    )


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
