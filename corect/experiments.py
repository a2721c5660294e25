"""The one experiment runner behind the multi-run commands (``benchmark``,
``compare_modes``): run configs, seeds, logging, progress, reuse of finished runs,
result files rewritten after every run, and mean ± std over seeds.

A command plans its runs (every config built and validated before the first one
trains), then :func:`run_plan` runs them in order under one log file (training
included) and one progress bar, calling the command's ``write(complete)`` after every
run so that an interrupted experiment leaves its finished runs tabulated.
:func:`train_or_reuse` trains a run unless a finished run with the same resolved config
is found.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from corect.config import Config, ConfigError, load_config
from corect.runs import run_status

log = logging.getLogger("corect.experiments")
# Config keys that may differ between the runs being compared.
FREE_KEYS = {"model.causal", "model.wf", "train.seed", "train.run_name", "train.runs_dir"}
FREE_KEYS |= {"train.progress", "train.device", "train.amp", "data.cache_dir"}
T = TypeVar("T")


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var)}


def fmt_mean_std(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def parse_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_seeds(seed_list: str | None, seeds: int) -> list[int]:
    """The seeds of ``--seed-list 1,7,42`` when given, else 1..``--seeds``."""
    if seed_list is not None:
        try:
            return [int(s) for s in parse_list(seed_list)]
        except ValueError as err:
            raise ConfigError(f"--seed-list={seed_list!r}: give integers, e.g. 1,7,42") from err
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds}: must be at least 1")
    return list(range(1, seeds + 1))


def training_config(
    config_path: str | None,
    overrides: Sequence[str],
    extra: Sequence[str],
    seed: int,
    run_name: str,
    runs_dir: Path | None = None,
) -> Config:
    """The validated config of one run of a multi-run command: base file, user overrides,
    the run's own overrides, seed, run name and (optionally) place. Progress bars are off
    unless the user set ``train.progress``."""
    quiet = (
        [] if any(o.startswith("train.progress=") for o in overrides) else ["train.progress=false"]
    )
    place = [f"train.runs_dir={runs_dir}"] if runs_dir is not None else []
    return load_config(
        config_path,
        [*quiet, *overrides, *extra, f"train.seed={seed}", *place, f"train.run_name={run_name}"],
    )


def setup_logging() -> logging.Logger:
    """Log the package ("corect", training included) to stderr once; return that logger."""
    package_log = logging.getLogger("corect")
    if not package_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package_log.addHandler(handler)
        package_log.setLevel(logging.INFO)
    return package_log


@contextmanager
def experiment_log(path: Path) -> Iterator[logging.Logger]:
    """The package log also goes to `path` (training included), and around tqdm bars."""
    package_log = setup_logging()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_log.addHandler(handler)
    try:
        with logging_redirect_tqdm([package_log]):
            yield package_log
    finally:
        package_log.removeHandler(handler)
        handler.close()


def run_plan(
    plan: Sequence[T],
    run: Callable[[T], None],
    write: Callable[[bool], None],
    *,
    desc: str,
    label: Callable[[T], str],
) -> None:
    """Run every item of `plan` in order under one progress bar (`label`: its postfix);
    after each, ``write(False)`` rewrites the results; at the end ``write(True)``."""
    progress = tqdm(plan, desc=desc, unit="run", dynamic_ncols=True)
    for item in progress:
        progress.set_postfix_str(label(item))
        run(item)
        write(False)
    write(True)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without the keys that do not change what is trained."""
    train = {k: v for k, v in config["train"].items() if k not in ("runs_dir", "progress")}
    return {**config, "train": train}


def finished_run(runs_dir: Path, config: Config) -> Path | None:
    """A run under `runs_dir` that completed (run.json; metrics.json for older runs) with
    exactly `config` (its place and progress bars aside), or None. Lets an interrupted
    experiment, run again with the same output, keep the runs it already has."""
    wanted = _comparable(config.to_dict())
    name = config.train.run_name
    if not name or not runs_dir.is_dir():
        return None
    for metrics in sorted(runs_dir.glob(f"**/{name}*/metrics.json")):
        run_dir = metrics.parent
        if run_dir.name != name and not run_dir.name.removeprefix(f"{name}-").isdigit():
            continue
        if run_status(run_dir) != "completed":
            continue
        try:
            saved = load_config(run_dir / "config.yaml").to_dict()
        except ConfigError:
            continue
        if _comparable(saved) == wanted:
            return run_dir
    return None


def train_or_reuse(config: Config, train_fn: Callable[[Config], Path], runs_dir: Path) -> Path:
    """The directory of a finished run of `config` under `runs_dir`, or of a new one."""
    finished = finished_run(runs_dir, config)
    if finished is not None:
        log.info("reusing the finished run %s", finished)
        return finished
    return Path(train_fn(config))


def flat_config(config: Config) -> dict[str, Any]:
    """``section.key -> value`` of a config (nested dataclasses flattened one level)."""
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


def check_comparable(configs: dict[str, Config]) -> None:
    """Loaded runs must use the same data; the right mode; other differences are logged."""
    base_name, base = next(iter(configs.items()))
    base_flat = flat_config(base)
    for run_dir, config in configs.items():
        flat = flat_config(config)
        for key in ("data.path", "data.modalities", "model.name"):
            if flat[key] != base_flat[key]:
                raise ConfigError(
                    f"{run_dir}: {key}={flat[key]!r} but {base_name} has {base_flat[key]!r}; "
                    "compare runs of the same data and model"
                )
        if not config.data.path and flat_synthetic(config) != flat_synthetic(base):
            raise ConfigError(f"{run_dir}: another synthetic dataset than {base_name}")
        differ = sorted(
            k
            for k in flat
            if k not in FREE_KEYS and k != "data.synthetic" and flat[k] != base_flat[k]
        )
        if differ:
            log.warning(
                "%s differs from %s in %s",
                run_dir,
                base_name,
                ", ".join(f"{k}={flat[k]!r}" for k in differ),
            )


def flat_synthetic(config: Config) -> dict[str, Any]:
    return config.to_dict()["data"]["synthetic"]
