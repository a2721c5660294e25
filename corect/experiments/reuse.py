"""What a multi-run command does with each planned run it finds on disk: reuse it,
resume it, or train it anew (:func:`train_or_reuse`; ``benchmark``, ``compare_modes`` and
``tune``'s final runs).

Run again with the same output folder, a command looks under its runs directory for the
runs named as the planned one (``<name>``, or ``<name>-<k>``) whose resolved config is
exactly the planned config (their place and progress bars aside), and

- reuses a run that completed;
- resumes one that stopped after a finished epoch (killed, stopped, failed: it has a
  training state, :func:`corect.engine.checkpoints.can_resume`) from that epoch, with
  ``train(config, resume=RUN_DIR)``: the figures are those of an uninterrupted run;
- removes the ones that stopped before their first epoch ended (nothing to resume) and
  trains the run anew, under its own name;
- refuses (:class:`RunBusyError`) a run that a live process of this machine still trains.

A completed run is never touched, nor a run of another config: a new run is made beside
it. Every decision is logged (into the experiment's log, whatever backend trains). Run
names must be the same from one attempt to the next: ``compare_modes``, whose names carry
a date, reads the ones its first attempt chose (:func:`recorded_run_name`).
"""

from __future__ import annotations

import glob
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corect.common.errors import InputError
from corect.common.files import HOST, read_json
from corect.config import Config, load_config
from corect.engine.checkpoints import RUN_STATUS, can_resume, live_trainer, run_status

log = logging.getLogger("corect.experiments.reuse")
# train(config) -> RUN_DIR, and train(config, resume=RUN_DIR) -> RUN_DIR.
TrainFn = Callable[..., Path]


class RunBusyError(InputError):
    """A planned run is still being trained by a live process of this machine."""


def recorded_run_name(out_dir: str | Path | None, name: str) -> str | None:
    """The run name that the experiment `name` in `out_dir` recorded (``run_name`` in its
    results.json; its runs are ``<run_name>-seed<k>``), so that a rerun with the same
    output finds its runs; None when there is none."""
    path = Path(out_dir) / "results.json" if out_dir else None
    if path is None or not path.is_file():
        return None
    try:
        data = read_json(path)
    except InputError:
        return None
    if isinstance(data, dict) and data.get("name") == name and data.get("run_name"):
        return str(data["run_name"])
    return None


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config without the keys that do not change what is trained."""
    train = {k: v for k, v in config["train"].items() if k not in ("runs_dir", "progress")}
    return {**config, "train": train}


def earlier_runs(runs_dir: Path, config: Config) -> list[tuple[Path, str]]:
    """The runs under `runs_dir` named as `config`'s run (``<name>`` or ``<name>-<k>``)
    with exactly `config` (its place and progress bars aside), and their status
    (:func:`corect.engine.checkpoints.run_status`), by name."""
    name = config.train.run_name
    if not name or not runs_dir.is_dir():
        return []
    wanted = comparable(config.to_dict())
    found = []
    for path in sorted(runs_dir.glob(f"**/{glob.escape(name)}*/config.yaml")):
        run_dir = path.parent
        if run_dir.name != name and not run_dir.name.removeprefix(f"{name}-").isdigit():
            continue
        try:
            saved = load_config(path).to_dict()
        except InputError:
            continue
        if comparable(saved) == wanted:
            found.append((run_dir, run_status(run_dir)))
    return found


def check_not_busy(run_dir: Path, status: str) -> None:
    """Refuse a run that a live process of this machine trains (:class:`RunBusyError`);
    warn about one that says it trains on another machine, whose process cannot be checked
    from here (on this machine, a dead process shows as ``interrupted``)."""
    if status != "running":
        return
    pid = live_trainer(run_dir)
    if pid is not None:
        raise RunBusyError(
            f"{run_dir}: still being trained by process {pid}; wait for it to end or stop it, "
            "then run the command again"
        )
    host = read_json(run_dir / RUN_STATUS).get("host")
    if host != HOST:
        log.warning("warning: %s says it trains on %s; taking it over from %s", run_dir, host, HOST)


def as_trained(run_dir: Path, config: Config) -> Config:
    """`config` as `run_dir` was trained with it: its saved config, with `config`'s
    progress bars (the place of the runs, however spelled, is the run's)."""
    saved = load_config(run_dir / "config.yaml")
    saved.train.progress = config.train.progress
    return saved


def train_or_reuse(config: Config, train_fn: TrainFn, runs_dir: Path) -> Path:
    """The directory of the finished run of `config` under `runs_dir`: an earlier run
    reused, an unfinished one resumed, or a new one trained (see the module's text)."""
    earlier = earlier_runs(runs_dir, config)
    done = next((d for d, status in earlier if status == "completed"), None)
    if done is not None:
        log.info("reusing the finished run %s", done)
        return done
    for run_dir, status in earlier:
        check_not_busy(run_dir, status)
    resumable = [(d, status) for d, status in earlier if can_resume(d)]
    for run_dir, status in earlier:
        if (run_dir, status) not in resumable and status != "running":
            log.info(
                "removing %s (%s): it stopped before its first epoch ended, nothing to resume",
                run_dir,
                status,
            )
            shutil.rmtree(run_dir)
    if resumable:
        run_dir, status = resumable[0]
        log.info(
            "resuming the unfinished run %s (%s) from its last finished epoch", run_dir, status
        )
        return Path(train_fn(as_trained(run_dir, config), resume=run_dir))
    log.info("training %s: no earlier run of its config", config.train.run_name)
    return Path(train_fn(config))
