"""Fault injection: kill a writer with SIGKILL at a random moment, recover, and check.

    python tests/faults.py --writer all --kills 100 --seed 0
    python tests/faults.py --writer training --kills 40 --modes window,state --launcher exec

A *writer* (:mod:`tests.fault_writers`: training, fine-tuning, a dataset conversion, a
benchmark) runs as its own process on tiny data in a workspace that also holds files the
user had (inputs, notes, an earlier result beside the output). Each trial kills it with
SIGKILL, then checks (:func:`run_trial`):

- no file the user had is lost or changed, and nothing but temporaries of
  :mod:`corect.common.files` (``.<name>.tmp-<host>-<pid>-*``, ``.<name>.old-*``) appeared
  outside the writer's outputs;
- every output that exists is complete: the old version or the new one (files parse by
  type, checkpoints load with ``torch.load(weights_only=True)``, plus the writer's checks);
- then it resumes (or reruns) the writer to the end: it must succeed, leave no temporary
  anywhere, and give the figures of an uninterrupted reference run (timings excepted).

When to kill (``--modes``): ``early`` uniform over the reference's start-up (before its
first output), ``window`` uniform over the reference's writing time once the first output
appears, ``temp`` when a temporary seen in the reference run appears again (an atomic
write in progress), ``state`` the same for the writer's state files only (training's
``training_state.pt``). Launchers: ``exec`` starts ``sys.executable -m <module>``; ``fork``
forks this process with the modules already imported (the same kill, without seconds of
imports per start: the tests use it). The script writes its summary to
``runs/faults/<date-time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # python tests/faults.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fault_kit import (
    MODES,
    Kill,
    Timing,
    debris,
    deliver,
    differences,
    entries,
    figures,
    launch,
    measure,
    output_problems,
    plan_kill,
    user_file_problems,
    user_files,
)
from tests.fault_writers import WRITERS, Scenario, Writer, build_inputs

REPO = Path(__file__).resolve().parents[1]


# --- trials ----------------------------------------------------------------------------


@dataclass
class Reference:
    """A writer's uninterrupted run: how long it took, what it gave."""

    timing: Timing
    figures: Any


@dataclass
class Trial:
    """One workspace: its kills, each followed by checks and a recovery."""

    writer: str
    number: int
    kills: list[Kill] = field(default_factory=list)
    recoveries: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delivered(self) -> int:
        return sum(k.delivered for k in self.kills)


def log_path(ws: Path, run: str) -> Path:
    """Where a run's output goes: beside the workspace, not in it."""
    logs = ws.parent / "logs"
    logs.mkdir(exist_ok=True)
    return logs / f"{ws.name}-{run}.txt"


def checked(check: Callable[[], list[str]]) -> list[str]:
    """The problems `check` finds; its exception (a file it cannot read) is one too."""
    try:
        return check()
    except Exception as err:
        return [f"the check raised {type(err).__name__}: {err}"]


def final_problems(
    writer: Writer, scn: Scenario, before: dict[str, str], expected: Any
) -> list[str]:
    """After a complete run: the user's files as they were, no temporaries, outputs
    readable and complete, the figures of the reference (when `expected` is given)."""
    problems = user_file_problems(scn.ws, before, scn.outputs, final=True) + debris(scn.ws)
    problems += output_problems(scn.ws, scn.outputs)
    problems += checked(lambda: writer.check(scn, expected, True))
    if expected is not None and not problems:
        problems += checked(lambda: differences(figures(writer.figures(scn), scn.ws), expected))
    return problems


def after_kill_problems(writer: Writer, scn: Scenario, before: dict[str, str], expected: Any):
    """After a kill: the user's files as they were, only temporaries new beside the
    outputs, every output readable and the old or the new version."""
    problems = user_file_problems(scn.ws, before, scn.outputs, final=False)
    problems += output_problems(scn.ws, scn.outputs)
    return problems + checked(lambda: writer.check(scn, expected, False))


def reference_run(writer: Writer, inputs: Path, ws: Path, fork: bool) -> Reference:
    """Run `writer` uninterrupted in workspace `ws`; its timing and figures."""
    scn = writer.prepare(ws, inputs)
    before, existing = user_files(ws, scn.outputs), entries(scn.watch)
    process = launch(writer.module, scn.argv, log_path(ws, "reference"), fork=fork)
    timing = measure(process, scn.watch, existing, writer.timeout)
    problems = final_problems(writer, scn, before, None)
    if problems:
        raise RuntimeError(f"{writer.name}: the uninterrupted run in {ws}: {problems}")
    return Reference(timing, figures(writer.figures(scn), ws))


def finish(writer: Writer, argv: list[str], ws: Path, fork: bool) -> list[str]:
    """Run the recovery `argv` to its end; a failure (its last lines) is a problem."""
    log = log_path(ws, "final")
    code = launch(writer.module, argv, log, fork=fork).wait(writer.timeout)
    if code == 0:
        return []
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return [f"the recovery run {argv[:2]}... failed (exit {code}): {' | '.join(tail)}"]


def run_trial(
    writer: Writer,
    inputs: Path,
    reference: Reference,
    ws: Path,
    rng: random.Random,
    modes: Sequence[str | Kill],
    *,
    fork: bool = False,
    number: int = 0,
) -> Trial:
    """Kill `writer` once per mode of `modes` (or as a planned :class:`Kill` says) in a
    fresh workspace (the first run, then its recoveries), checking after each kill; then
    recover to the end and check all."""
    start = time.monotonic()
    trial, scn = Trial(writer.name, number), writer.prepare(ws, inputs)
    before, argv = user_files(ws, scn.outputs), scn.argv
    for k, mode in enumerate(modes, start=1):
        if isinstance(mode, Kill):
            kill = replace(mode)
        else:
            kill = plan_kill(mode, reference.timing, writer.state_names, rng)
        existing = entries(scn.watch)
        process = launch(writer.module, argv, log_path(ws, str(k)), fork=fork)
        trial.kills.append(deliver(kill, process, scn.watch, existing))
        kill.landed = " ".join(checked(lambda: [writer.landed(scn)]))
        found = after_kill_problems(writer, scn, before, reference.figures)
        trial.problems += [f"after kill {k} ({describe(kill)}): {p}" for p in found]
        argv = writer.recovery(scn)
        trial.recoveries.append("resume" if "--resume" in argv else "rerun")
    problems = finish(writer, argv, ws, fork)
    problems = problems or final_problems(writer, scn, before, reference.figures)
    trial.problems += [f"at the end: {p}" for p in problems]
    trial.seconds = time.monotonic() - start
    return trial


def describe(kill: Kill) -> str:
    """A kill in words, e.g. ``window +0.41 s`` or ``state: training_state.pt #3``."""
    aim = f"{kill.target} #{kill.occurrence}" if kill.target else f"+{kill.delay:.2f} s"
    where = f" ({kill.landed})" if kill.landed else ""
    missed = "" if kill.delivered else ", not delivered"
    return f"{kill.mode} {aim}, at {kill.at:.2f} s{where}{missed}"


# --- the script ------------------------------------------------------------------------


def share_kills(names: Sequence[str], total: int) -> dict[str, int]:
    """`total` kills over the writers, training counting twice (40/20/20/20 of 100)."""
    weights = {name: 2 if name == "training" else 1 for name in names}
    shares = {name: total * w // sum(weights.values()) for name, w in weights.items()}
    shares[names[0]] += total - sum(shares.values())
    return shares


def kill_writer(
    writer: Writer, kills: int, inputs: Path, work: Path, rng: random.Random, args: Any
) -> dict[str, Any]:
    """A reference run, then trials until `kills` kills met a running writer (at most
    3 x `kills` trials); the writer's part of the summary."""
    fork = args.launcher == "fork"
    reference = reference_run(writer, inputs, work / f"{writer.name}-reference", fork)
    print(f"{writer.name}: reference run {reference.timing.end:.1f} s", flush=True)
    trials: list[Trial] = []
    while sum(t.delivered for t in trials) < kills and len(trials) < 3 * kills:
        ws = work / f"{writer.name}-{len(trials) + 1}"
        modes = [rng.choice(args.modes) for _ in range(args.chain)]
        number = len(trials) + 1
        try:
            trial = run_trial(writer, inputs, reference, ws, rng, modes, fork=fork, number=number)
        except Exception as err:  # a recovery that cannot be chosen, a run that hangs
            trial = Trial(writer.name, number, problems=[f"{type(err).__name__}: {err}"])
        trials.append(trial)
        verdict = "ok" if not trial.problems else f"FAILED: {trial.problems[:3]}"
        print(
            f"  {writer.name} #{trial.number}: {[describe(k) for k in trial.kills]} {verdict}",
            flush=True,
        )
        if not trial.problems and not args.keep:
            shutil.rmtree(ws)
    return summary(writer, reference, trials)


def summary(writer: Writer, reference: Reference, trials: Sequence[Trial]) -> dict[str, Any]:
    """Counts of kills delivered and survived, by mode, and every failed trial."""
    kills = [(k, t) for t in trials for k in t.kills]
    delivered = [(k, t) for k, t in kills if k.delivered]
    by_mode: dict[str, dict[str, int]] = {}
    for kill, trial in delivered:
        counts = by_mode.setdefault(kill.mode, {"kills": 0, "survived": 0, "temporary_hit": 0})
        counts["kills"] += 1
        counts["survived"] += not trial.problems
        counts["temporary_hit"] += kill.hit
    return {
        "reference_seconds": round(reference.timing.end, 2),
        "reference_first_output_seconds": round(reference.timing.first, 2),
        "reference_temporaries": reference.timing.temporaries,
        "trials": len(trials),
        "kills": len(delivered),
        "survived": sum(not t.problems for _, t in delivered),
        "not_delivered": len(kills) - len(delivered),
        "recoveries": {
            r: sum(r == x for t in trials for x in t.recoveries) for r in ("resume", "rerun")
        },
        "by_mode": by_mode,
        "landed": dict(Counter(k.landed for k, _ in delivered if k.landed).most_common()),
        "failures": [asdict(t) for t in trials if t.problems],
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary as a table, then the failures."""
    lines = [f"# Fault injection, {report['date']}", "", f"`{report['command']}`", ""]
    lines += [
        "| writer | kills | survived | not delivered | resumed / rerun | by mode |",
        "|---|---|---|---|---|---|",
    ]
    for name, part in report["writers"].items():
        if "skipped" in part:
            lines.append(f"| {name} | skipped: {part['skipped']} | | | | |")
            continue
        modes = ", ".join(f"{m} {c['survived']}/{c['kills']}" for m, c in part["by_mode"].items())
        rec = part["recoveries"]
        lines.append(
            f"| {name} | {part['kills']} | {part['survived']} | {part['not_delivered']} | "
            f"{rec['resume']} / {rec['rerun']} | {modes} |"
        )
    for name, part in report["writers"].items():
        if part.get("landed"):
            where = ", ".join(f"{place} {n}" for place, n in part["landed"].items())
            lines += ["", f"{name}: where the kills landed: {where}."]
    for name, part in report["writers"].items():
        for failure in part.get("failures", []):
            lines += ["", f"## {name} #{failure['number']}", ""]
            lines += [f"- {describe(Kill(**k))}" for k in failure["kills"]]
            lines += [f"- {p}" for p in failure["problems"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The script's options (``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python tests/faults.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--writer", default="all", choices=[*WRITERS, "all"])
    parser.add_argument(
        "--kills",
        type=int,
        default=100,
        help="kills that meet a running writer, in all (split 2:1:1:1 for all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default=",".join(MODES), help=f"kill modes among {MODES}")
    parser.add_argument(
        "--chain", type=int, default=1, help="kills per workspace: the run, then its recoveries"
    )
    parser.add_argument("--launcher", choices=("exec", "fork"), default="exec")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "faults",
        help="folder of the summary (<date-time>.json and .md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the workspaces that passed too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Kill the writers asked for; write the summary; exit 1 when a kill was not survived."""
    args = build_parser().parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    names = list(WRITERS) if args.writer == "all" else [args.writer]
    rng, start = random.Random(args.seed), time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="corect-faults-"))
    inputs = build_inputs(work / "inputs")
    report: dict[str, Any] = {"date": datetime.now().isoformat(timespec="seconds")}
    report["command"] = " ".join(["python tests/faults.py", *(argv or sys.argv[1:])])
    report["writers"] = {}
    for name, kills in share_kills(names, args.kills).items():
        reason = WRITERS[name].missing()
        report["writers"][name] = (
            {"skipped": reason}
            if reason
            else kill_writer(WRITERS[name], kills, inputs, work, rng, args)
        )
    report["seconds"] = round(time.monotonic() - start)
    report["workspaces"] = str(work)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(stem.with_suffix(".json"))
    failed = any(part.get("failures") for part in report["writers"].values())
    if not failed and not args.keep:
        shutil.rmtree(work)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
