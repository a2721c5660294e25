"""Tuning, behind ``python -m corect.tune``: the search on Ray Tune
(:mod:`corect.experiments.trials`; the space format: :mod:`corect.experiments.space`),
then the best config and the config itself (unless ``with_base=False``) trained with
several seeds and scored on test (:func:`run_tune`).

Under the output directory (default ``<train.runs_dir>/tune/<name>-<date-time>/``):
``best.yaml`` (the best trial's config, a normal config file); ``trials.csv``, ``.md``,
``.json`` (every trial, best first: values, best dev weighted F1 and epoch, epochs run,
how it ended; JSON: the dev curves); ``results.md``, ``.json`` (test and dev mean ± std
over seeds per config); ``tune.log``; the runs in ``trials/`` and ``final/``; Ray Tune's
records (and each trial's checkpoint) in ``ray-tune/``; ``search.json``, the search's
settings. Run again with the same output folder, an interrupted tuning continues: the
search where it stopped (:mod:`corect.experiments.trials`), the final runs reused or
resumed (:mod:`corect.experiments.reuse`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from corect.common.files import write_atomic, write_json_atomic
from corect.common.metrics import SCORES
from corect.common.runtime import timestamp
from corect.config import Config, ConfigError, load_config
from corect.engine.training import train
from corect.experiments.backends import RayBackend, require_ray
from corect.experiments.reuse import train_or_reuse
from corect.experiments.runner import (
    experiment_folder,
    experiment_log,
    fmt_mean_std,
    markdown_table,
    run_plan,
    seed_scores,
    training_config,
)
from corect.experiments.space import load_space
from corect.experiments.trials import Trial, search, write_best, write_trials

log = logging.getLogger("corect.experiments.tuning")
FinalItem = tuple[str, int, Config]  # label (best, base), seed, the run's config


def train_final(item: FinalItem, runs_dir: Path) -> Path:
    """Train a chosen config with one seed (or reuse or resume its earlier run)."""
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


def choose(
    found: list[Trial],
    config_path: str | None,
    overrides: Sequence[str],
    base: Config,
    out: Path,
    *,
    name: str,
    command: str,
    with_base: bool,
) -> Final:
    """Write the trials and best.yaml; return the configs to train with several seeds: the
    best one, and `base` (the config as given) unless it is the best or `with_base` is off."""
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
    return Final(out, configs, search_info)


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
    train the best config (and the base one) with `seeds`; return the final results.
    `out_dir` defaults to a new folder ``<train.runs_dir>/tune/<name>-<date-time>``."""
    ray = require_ray("python -m corect.tune")
    if trials < 1 or not seeds or search_options.get("grace_epochs", 1) < 1:
        raise ConfigError("--trials, --grace-epochs and the seeds: at least 1")
    params = load_space(space_path, config_path, overrides)
    base = load_config(config_path, list(overrides))
    name = name or (Path(config_path).stem if config_path else "synthetic")
    out = experiment_folder(out_dir, Path(base.train.runs_dir) / "tune", f"{name}-{timestamp()}")
    backend = backend or RayBackend()
    started = backend.start()
    try:
        with experiment_log(out / "tune.log"):
            found = search(config_path, params, trials, overrides, out, backend, **search_options)
            final = choose(
                found,
                config_path,
                overrides,
                base,
                out,
                name=name,
                command=command,
                with_base=with_base,
            )
            final.write(complete=False)
            train_chosen(final, seeds, backend)
    finally:
        if started:
            ray.shutdown()
    return final
