"""The mechanics of fault injection (:mod:`tests.faults`): writers started as processes,
watched and killed with SIGKILL at a chosen moment, and the checks made afterwards on the
workspace (the user's files, temporaries, outputs that read, figures that compare)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from corect.common.files import HOST

REPO = Path(__file__).resolve().parents[1]
# A temporary entry of corect.common.files (any host, any process).
TEMPORARY = re.compile(r"^\..+\.(tmp|old)-[^/]+-\d+-[A-Za-z0-9_]+$")
# Keys of figures that are timings (or where and when), not results.
TIMING = re.compile(r"second|time|date|duration|host|pid", re.IGNORECASE)
MODES = ("early", "window", "temp", "state")
POLL = 0.001  # seconds between looks at the output folders


# --- processes -------------------------------------------------------------------------


@dataclass
class Process:
    """A writer started by :func:`launch`: ``python -m`` (``popen``) or a fork of this one."""

    pid: int
    popen: subprocess.Popen[bytes] | None = None
    code: int | None = None  # exit status once ended; -9 when killed by SIGKILL

    def poll(self) -> int | None:
        if self.code is None:
            if self.popen is not None:
                self.code = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def kill(self) -> None:
        """SIGKILL, unless it has ended and been reaped (its pid may then be reused)."""
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                self.wait(10)
                raise TimeoutError(f"pid {self.pid} still running after {timeout:.0f} s")
            time.sleep(0.005)
        return int(self.code)


def _child(module: str, argv: Sequence[str], log: Path) -> None:
    """In a forked child: run ``module.main(argv)`` with output to `log`, then exit."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        import importlib
        import logging

        for handler in logging.getLogger("corect").handlers:
            if type(handler) is logging.StreamHandler:
                handler.setStream(sys.stderr)
        code = importlib.import_module(module).main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def launch(module: str, argv: Sequence[str], log: Path, *, fork: bool) -> Process:
    """Start ``python -m module argv`` (or, with `fork`, a fork running its ``main``),
    its output to `log`; one CPU thread, as the tests train."""
    if fork:
        import importlib

        importlib.import_module(module)  # imported once, here, not in every child
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(module, argv, log)
        return Process(pid)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *argv], cwd=REPO, env=env, stdout=out, stderr=out
        )
    return Process(popen.pid, popen)


# --- watching and killing --------------------------------------------------------------


def entries(roots: Sequence[Path]) -> set[str]:
    """Every path under `roots` (temporary folders not entered)."""
    found: set[str] = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            found.update(os.path.join(folder, name) for name in (*dirs, *files))
            dirs[:] = [d for d in dirs if not TEMPORARY.match(d)]
    return found


def temporaries_of(pid: int, paths: set[str]) -> set[str]:
    """The temporaries among `paths` that process `pid` made."""
    mark = f"-{HOST}-{pid}-"
    names = {p: os.path.basename(p) for p in paths}
    return {p for p, name in names.items() if TEMPORARY.match(name) and mark in name}


def target_of(temporary: str) -> str:
    """The file a temporary stands for: ``.x.pt.tmp-host-1-ab`` -> ``x.pt``."""
    return re.sub(r"\.(tmp|old)-.*$", "", os.path.basename(temporary))[1:]


@dataclass
class Timing:
    """An uninterrupted run, as watched: when its first output appeared and when it ended
    (seconds after its start), and the temporaries it made, in order (target names)."""

    first: float
    end: float
    temporaries: list[str]


Stop = Callable[[float, set[str], list[str]], bool]


def observe(process: Process, roots: Sequence[Path], stop: Stop) -> list[str]:
    """Poll `roots` until ``stop(elapsed, entries, temporaries seen)`` or the process
    ends; return the temporaries of the process seen, in order of appearance."""
    start, seen = time.monotonic(), []
    while process.poll() is None:
        now = entries(roots)
        seen += sorted(temporaries_of(process.pid, now) - set(seen))
        if stop(time.monotonic() - start, now, seen):
            break
        time.sleep(POLL)
    return seen


def measure(process: Process, roots: Sequence[Path], before: set[str], timeout: float) -> Timing:
    """Watch an uninterrupted run to its end (`before`: the entries before its start)."""
    first: list[float] = []

    def note_first(elapsed: float, now: set[str], seen: list[str]) -> bool:
        if not first and now - before:
            first.append(elapsed)
        return elapsed > timeout

    start = time.monotonic()
    seen = observe(process, roots, note_first)
    code = process.wait(timeout)
    end = time.monotonic() - start
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed (exit status {code})")
    return Timing(first[0] if first else end, end, [target_of(p) for p in seen])


@dataclass
class Kill:
    """One kill: how it was aimed, when it came, whether it met a running writer."""

    mode: str
    delay: float = 0.0  # early: after the start; window: after the first output
    target: str = ""  # temp, state: the file whose temporary was awaited
    occurrence: int = 0  # ... its n-th temporary
    at: float = 0.0  # seconds after the start
    delivered: bool = False  # the writer died of it (it had not ended before)
    hit: bool = False  # the awaited temporary was still there after the kill
    landed: str = ""  # where the writer was, as its files tell (training: the epoch)


def plan_kill(mode: str, timing: Timing, state_names: Sequence[str], rng: random.Random) -> Kill:
    """When to kill, drawn for `mode` from an uninterrupted run's `timing` (temp and
    state without such temporaries in the reference: by time, as window)."""
    names = timing.temporaries
    if mode == "state":
        names = [n for n in names if n in state_names]
    if mode in ("temp", "state") and names:
        k = rng.randrange(len(names))
        return Kill(mode, target=names[k], occurrence=names[: k + 1].count(names[k]))
    if mode == "early":
        return Kill(mode, delay=rng.uniform(0, timing.first))
    return Kill(mode, delay=rng.uniform(0, max(timing.end - timing.first, 0.0)))


def deliver(kill: Kill, process: Process, roots: Sequence[Path], before: set[str]) -> Kill:
    """Kill `process` when `kill` says (`before`: the entries before its start)."""
    first: list[float] = []

    def due(elapsed: float, now: set[str], seen: list[str]) -> bool:
        if kill.target:
            return sum(target_of(p) == kill.target for p in seen) >= kill.occurrence
        if kill.mode == "early":
            return elapsed >= kill.delay
        if not first and now - before:
            first.append(elapsed)
        return bool(first) and elapsed >= first[0] + kill.delay

    start = time.monotonic()
    observe(process, roots, due)
    process.kill()
    kill.at = time.monotonic() - start
    kill.delivered = process.wait(60) == -signal.SIGKILL
    if kill.target:
        left = temporaries_of(process.pid, entries(roots))
        kill.hit = any(target_of(p) == kill.target for p in left)
    return kill


# --- checks ----------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relative_files(root: Path) -> list[str]:
    """Every file under `root`, relative to it, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def is_output(rel: str, outputs: Sequence[str]) -> bool:
    """Whether `rel` (relative to the workspace) is one of the `outputs` (glob
    patterns) or lies inside one."""
    parts = Path(rel).parts
    prefixes = [str(Path(*parts[:k])) for k in range(1, len(parts) + 1)]
    return any(Path(prefix).match(pattern) for prefix in prefixes for pattern in outputs)


def user_files(ws: Path, outputs: Sequence[str]) -> dict[str, str]:
    """sha256 of every file of the workspace outside the writer's outputs."""
    return {rel: sha256(ws / rel) for rel in relative_files(ws) if not is_output(rel, outputs)}


def temporary(rel: str) -> bool:
    """Whether a path is, or lies in, a temporary entry."""
    return any(TEMPORARY.match(part) for part in Path(rel).parts)


def user_file_problems(
    ws: Path, before: dict[str, str], outputs: Sequence[str], final: bool
) -> list[str]:
    """Files the user had that are lost or changed, and files that appeared outside the
    outputs (after a kill only temporaries may; after the recovery nothing may)."""
    after = user_files(ws, outputs)
    problems = [f"lost: {rel}" for rel in before if rel not in after]
    problems += [f"changed: {rel}" for rel in before if rel in after and after[rel] != before[rel]]
    for rel in sorted(set(after) - set(before)):
        if final or not temporary(rel):
            problems.append(f"{'left behind' if final else 'appeared'}: {rel}")
    return problems


def debris(ws: Path) -> list[str]:
    """Temporary entries (files or folders) anywhere in the workspace."""
    found = []
    for folder, dirs, files in os.walk(ws):
        for name in (*dirs, *files):
            if TEMPORARY.match(name):
                found.append(f"left behind: {Path(folder, name).relative_to(ws)}")
        dirs[:] = [d for d in dirs if not TEMPORARY.match(d)]
    return found


def unreadable(path: Path) -> str | None:
    """Why a finished file does not read as its type (None: it reads): JSON, YAML,
    torch (weights_only), safetensors, PNG; other types are not checked."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".png" and not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
            return "a truncated PNG"
    except Exception as err:
        return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
    return None


def output_problems(ws: Path, outputs: Sequence[str]) -> list[str]:
    """Every non-temporary file of the outputs must read as its type."""
    problems = []
    for rel in relative_files(ws):
        if is_output(rel, outputs) and not temporary(rel):
            why = unreadable(ws / rel)
            if why:
                problems.append(f"unreadable: {rel} ({why})")
    return problems


def figures(value: Any, ws: Path) -> Any:
    """`value` without its timings (keys matching :data:`TIMING`), the workspace's
    path written ``<ws>``, so that two runs in two workspaces compare."""
    if isinstance(value, dict):
        return {k: figures(v, ws) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [figures(v, ws) for v in value]
    return value.replace(str(ws), "<ws>") if isinstance(value, str) else value


def differences(got: Any, want: Any, where: str = "") -> list[str]:
    """Where two figures differ (keys with a path, values shown)."""
    if isinstance(got, dict) and isinstance(want, dict):
        out = []
        for key in sorted(set(got) | set(want), key=str):
            here = f"{where}.{key}" if where else str(key)
            if key not in got or key not in want:
                out.append(f"{here}: only in {'the reference' if key in want else 'this run'}")
            else:
                out += differences(got[key], want[key], here)
        return out
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [
            d
            for k, (g, w) in enumerate(zip(got, want, strict=True))
            for d in differences(g, w, f"{where}[{k}]")
        ]
    return (
        []
        if got == want
        else [f"{where or 'value'}: {str(got)[:80]} != reference {str(want)[:80]}"]
    )
