"""Execution backends of the experiment runner: where the runs of a plan train.

The default is the sequential path (:func:`corect.experiments.runner.run_plan` with no
backend): one run after another in this process. :class:`RayBackend` makes every run a
`Ray <https://www.ray.io>`_ task with its own CPU/GPU share, on a local Ray started on
this machine or on a cluster (``--address``); the driver (this process) still records
every finished run, rewrites the results files, shows the progress and stops at the
first failure, so a command writes the same files whatever ran its runs.

A task runs in the driver's working directory when the node has it (relative paths in
configs mean the same; on a cluster, put data and outputs on shared storage mounted at
the same path), bounds torch's threads to its CPU share, and logs into the driver's log
files as well. Workers import the driver's ``corect``: a local Ray gets its directory on
``PYTHONPATH``, a cluster gets the package shipped (Ray's ``py_modules``).

Ray is optional (``pip install -e ".[ray]"``) and imported only when used.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

import corect
from corect.common.errors import InputError
from corect.common.runtime import keep_freed_memory
from corect.config import ConfigError
from corect.experiments.runner import Outputs, RunFailed, log_to_file

log = logging.getLogger("corect.experiments.backends")
T = TypeVar("T")
R = TypeVar("R")
INSTALL_HINT = 'pip install -e ".[ray]"'


def require_ray(what: str = "--backend ray") -> Any:
    """The ``ray`` module, or an :class:`InputError` that says what to install."""
    try:
        import ray
    except ImportError as err:
        raise InputError(f"{what} needs Ray, which is not installed: {INSTALL_HINT}") from err
    return ray


def start_ray(address: str | None = None, **options: Any) -> bool:
    """Connect to the Ray cluster at `address`, or start a local Ray (`options`: for
    ``ray.init``, e.g. ``num_cpus``); either way its workers import this ``corect``.
    Returns False (and does nothing) when this process is already connected."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    package = Path(corect.__file__).resolve().parent
    if address is None:
        paths = (str(package.parent), os.environ.get("PYTHONPATH", ""))
        env: dict[str, Any] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}}
        options = {"include_dashboard": False, **options}
    else:
        env = {"py_modules": [str(package)]}
    # Workers log into the experiment's log file; their stderr stays in Ray's logs.
    options = {"log_to_driver": False, **options}
    ray.init(address=address, runtime_env=env, logging_level=logging.WARNING, **options)
    return True


@dataclass(frozen=True)
class WorkerContext:
    """What a task takes from the driver: its working directory, a thread count for its
    CPU share, and the files the package log goes to."""

    cwd: str
    threads: int
    log_files: tuple[str, ...]

    @classmethod
    def here(cls, cpus: float) -> WorkerContext:
        files = tuple(
            h.baseFilename
            for h in logging.getLogger("corect").handlers
            if isinstance(h, logging.FileHandler)
        )
        return cls(os.getcwd(), max(1, int(cpus)), files)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside a worker: the driver's directory, the thread count, the log files."""
        if os.path.isdir(self.cwd):
            os.chdir(self.cwd)
        torch.set_num_threads(self.threads)
        keep_freed_memory()
        with ExitStack() as stack:
            for path in self.log_files:
                if os.path.isdir(os.path.dirname(path)):
                    stack.enter_context(log_to_file(path))
            yield


def run_task(work: Callable[[T], R], item: T, context: WorkerContext) -> R:
    """The body of every Ray task: `work(item)` under the driver's `context`."""
    with context.applied():
        return work(item)


def task_error(err: Exception) -> Exception:
    """The exception a task raised (Ray wraps it), else Ray's own error (a lost worker)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


@dataclass
class RayBackend:
    """Every run a Ray task with `cpus_per_run` CPUs and `gpus_per_run` GPUs (fractions
    share a GPU), on the cluster at `address` or else a local Ray."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
        return f"{where}, {self.cpus_per_run:g} CPU and {self.gpus_per_run:g} GPU per run"

    def start(self) -> bool:
        """Start (or connect to) Ray unless this process already is; see start_ray."""
        return start_ray(self.address)

    def run(self, work: Callable[[T], R], items: Sequence[T]) -> Outputs[R]:
        """Submit every item at once (Ray queues what does not fit); yield
        ``(position, output)`` as runs finish. A failed task (its exception, or a lost
        worker: tasks are not retried) raises :class:`RunFailed`; then, or when the
        generator is closed early, the unfinished tasks are cancelled."""
        ray = require_ray()
        started = self.start()
        pending: dict[Any, int] = {}
        try:
            task = ray.remote(run_task).options(
                num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0
            )
            context, shared_work = WorkerContext.here(self.cpus_per_run), ray.put(work)
            for position, item in enumerate(items):
                pending[task.remote(shared_work, item, context)] = position
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                position = pending.pop(ref)
                try:
                    output = ray.get(ref)
                except ray.exceptions.RayError as err:
                    log.error("a run failed on Ray: %s", err)  # with the task's traceback
                    raise RunFailed(position, task_error(err)) from None
                yield position, output
        finally:
            for ref in pending:
                ray.cancel(ref)
            if started:
                ray.shutdown()


def add_backend_arguments(parser: argparse.ArgumentParser, choose: bool = True) -> None:
    """``--backend`` (when `choose`), ``--address``, ``--cpus-per-run``, ``--gpus-per-run``."""
    group = parser.add_argument_group(f"execution on Ray ({INSTALL_HINT})")
    if choose:
        group.add_argument(
            "--backend",
            choices=("sequential", "ray"),
            default="sequential",
            help="sequential: one run after another in this process (default); ray: every "
            "run a Ray task, several at once",
        )
    group.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on (e.g. auto on a cluster's head node, or "
        "ray://HEAD:10001); default: start a local Ray on this machine",
    )
    group.add_argument(
        "--cpus-per-run", type=float, default=1.0, metavar="N", help="CPUs per run (default 1)"
    )
    group.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs per run; fractions share a GPU, e.g. 0.25 = 4 runs per GPU (default 0: "
        "runs train on CPU)",
    )


def backend_from_args(args: argparse.Namespace, what: str = "--backend ray") -> RayBackend | None:
    """The backend the options ask for: None (sequential) or a :class:`RayBackend`
    (`what` needs Ray, says the message when it is missing)."""
    if getattr(args, "backend", "ray") == "sequential":
        given = [
            option
            for option, value, default in (
                ("--address", args.address, None),
                ("--cpus-per-run", args.cpus_per_run, 1.0),
                ("--gpus-per-run", args.gpus_per_run, 0.0),
            )
            if value != default
        ]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --backend ray")
        return None
    if not args.cpus_per_run > 0:
        raise ConfigError(f"--cpus-per-run={args.cpus_per_run}: must be positive")
    if args.gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run={args.gpus_per_run}: must be 0 or more")
    require_ray(what)
    return RayBackend(args.address, args.cpus_per_run, args.gpus_per_run)
