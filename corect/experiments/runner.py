"""The one experiment runner behind the multi-run commands (``benchmark``,
``compare_modes``, ``tune``'s final runs): run configs, seeds, logging, progress, result
files rewritten after every run, and mean ± std over seeds.

A command plans its runs (every config built and validated before the first one
trains), then :func:`run_plan` trains them, one after another in this process or as
tasks of a :class:`Backend` (:class:`corect.experiments.backends.RayBackend`), under one log file
(training included) and one progress bar. As each run finishes, the command records it
and its ``write(complete)`` rewrites the results here, in the driver, so that an
interrupted experiment leaves its finished runs tabulated whatever ran them; run again,
its runs are reused, resumed or trained anew (:mod:`corect.experiments.reuse`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from corect.common.files import output_directory
from corect.common.metrics import SCORES
from corect.common.runtime import setup_logging
from corect.config import Config, ConfigError, add_overrides_argument, load_config

log = logging.getLogger("corect.experiments.runner")
# Config keys that may differ between the runs being compared.
FREE_KEYS = {"model.causal", "model.wf", "train.seed", "train.run_name", "train.runs_dir"}
FREE_KEYS |= {"train.progress", "train.device", "train.amp", "data.cache_dir"}
T = TypeVar("T")
R = TypeVar("R")
# (position in the plan, output of its work), as runs finish.
Outputs = Generator[tuple[int, R], None, None]


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var)}


def seed_scores(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over runs (in %) of the test accuracy, weighted F1 and macro F1, and of
    the dev weighted F1 (None when a run lacks it), from the runs' metrics.json."""
    out: dict[str, Any] = {key: mean_std([100 * m["test"][key] for m in metrics]) for key in SCORES}
    dev = [m.get("dev", {}).get("weighted_f1") for m in metrics]
    out["dev_weighted_f1"] = mean_std([100 * d for d in dev]) if None not in dev else None
    return out


def fmt_mean_std(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def fmt_value(value: Any) -> str:
    """A table cell: floats to 4 significant digits, mappings and lists as JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `rows` (the first row's keys are the columns)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(fmt_value(v) for v in row.values()) + " |" for row in rows]
    return "\n".join(lines)


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


def add_plan_arguments(parser: argparse.ArgumentParser, *, seeds: int, out: str) -> None:
    """The options of every multi-run command: ``--config``, ``--seeds`` or
    ``--seed-list``, ``--set``, ``--name`` and ``--out`` (`out`: its default, in words)."""
    parser.add_argument(
        "--config", default=None, help="YAML config (default: CORECT on the synthetic data)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--seeds", type=int, default=seeds, help=f"train with seeds 1..N (default: {seeds})"
    )
    group.add_argument("--seed-list", default=None, help="comma-separated seeds, e.g. 1,7,42")
    add_overrides_argument(
        parser, "config overrides for every run, e.g. train.epochs=20 data.modalities=t"
    )
    parser.add_argument(
        "--name", default=None, help="name (default: the config file's stem, or 'synthetic')"
    )
    parser.add_argument("--out", default=None, help=f"output directory (default: {out})")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command as typed (`argv`: its arguments; None: this process's)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


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
    # Quoted: a name or a path that looks like a number stays a string.
    place = [f"train.runs_dir={json.dumps(str(runs_dir))}"] if runs_dir is not None else []
    name = f"train.run_name={json.dumps(run_name)}"
    return load_config(
        config_path, [*quiet, *overrides, *extra, f"train.seed={seed}", *place, name]
    )


def experiment_folder(out_dir: str | Path | None, parent: Path, name: str) -> Path:
    """The output folder of an experiment: `out_dir` when given (made if missing; it may
    hold an earlier run of the same experiment, whose runs are reused or resumed), else a
    new folder ``parent/name`` (:func:`corect.common.files.output_directory`)."""
    if not out_dir:
        return output_directory(parent, name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def log_to_file(path: str | Path) -> Iterator[logging.Logger]:
    """The package log (training included) also goes to `path` (appended) while open."""
    package_log = setup_logging()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_log.addHandler(handler)
    try:
        yield package_log
    finally:
        package_log.removeHandler(handler)
        handler.close()


@contextmanager
def experiment_log(path: Path) -> Iterator[logging.Logger]:
    """The package log also goes to `path` (training included), and around tqdm bars."""
    with log_to_file(path) as package_log, logging_redirect_tqdm([package_log]):
        yield package_log


class RunFailed(Exception):
    """The run at `position` of a plan failed with `cause` (raised by backends)."""

    def __init__(self, position: int, cause: Exception) -> None:
        super().__init__(f"run {position} of the plan failed: {cause}")
        self.position, self.cause = position, cause


class Backend(Protocol):
    """Where the runs of a plan train (:mod:`corect.experiments.backends`); None: here, in order."""

    def describe(self) -> str:
        """How runs are placed, for the log (e.g. "local Ray, 1 CPU per run")."""
        ...

    def run(self, work: Callable[[T], R], items: Sequence[T]) -> Outputs[R]:
        """Yield ``(position, work(item))`` for every item as each finishes; a failure
        raises :class:`RunFailed` after cancelling the runs not finished."""
        ...


def _in_order(
    plan: Sequence[T], work: Callable[[T], R], progress: tqdm, label: Callable[[T], str]
) -> Outputs[R]:
    """The sequential path: each item's work in this process, in plan order."""
    for position, item in enumerate(plan):
        progress.set_postfix_str(label(item))
        try:
            output = work(item)
        except Exception as err:
            raise RunFailed(position, err) from err
        yield position, output


def run_plan(
    plan: Sequence[T],
    work: Callable[[T], R],
    record: Callable[[int, R], None],
    write: Callable[[bool], None],
    *,
    desc: str,
    label: Callable[[T], str],
    failed: Callable[[T, Exception], Exception] | None = None,
    backend: Backend | None = None,
) -> None:
    """Run every item of `plan` under one progress bar (`label`: an item's postfix).

    ``work(item)`` trains it: here in plan order (`backend` None) or as a task of
    `backend`, several at once. Then, in this process as each finishes,
    ``record(position, output)`` keeps its result and ``write(False)`` rewrites the
    results; at the end ``write(True)``. The first failure (of `work` or `record`) stops
    the plan and is raised as ``failed(item, error)`` (default: as it is); the runs
    recorded before it stay written.
    """
    progress = tqdm(total=len(plan), desc=desc, unit="run", dynamic_ncols=True)
    if backend is None:
        outputs = _in_order(plan, work, progress, label)
    else:
        log.info("%d runs on %s", len(plan), backend.describe())
        outputs = backend.run(work, plan)
    try:
        for position, output in outputs:
            try:
                record(position, output)
            except Exception as err:
                raise RunFailed(position, err) from err
            write(False)
            if backend is not None:
                progress.set_postfix_str(f"done {label(plan[position])}")
            progress.update()
    except RunFailed as err:
        if failed is None:
            raise err.cause from None
        raise failed(plan[err.position], err.cause) from err.cause
    finally:
        outputs.close()  # a backend cancels the runs not finished
        progress.close()
    write(True)


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
