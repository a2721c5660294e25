"""Fault injection in the suite: each writer (training, fine-tuning, a dataset conversion,
a benchmark) is killed with SIGKILL a few times, then resumed or run again; nothing the
user had may be lost or changed, no temporary may stay, every output must read, and the
figures must be the uninterrupted run's (:mod:`tests.faults`; longer runs:
``python tests/faults.py``). The writers are forks of this process (the modules already
imported), so that a kill costs a second, not the seconds of imports."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.fault_kit import (
    Kill,
    Process,
    debris,
    deliver,
    entries,
    output_problems,
    user_file_problems,
    user_files,
)
from tests.fault_writers import WRITERS, build_inputs
from tests.faults import Reference, describe, reference_run, run_trial

# Per writer: the kills of each trial, a mode or a planned kill (several: its recoveries
# are killed too). Training's first run is not killed inside epoch 1 here: see
# test_a_run_killed_before_its_first_state_leaves_no_temporary.
STATE_3 = Kill("state", target="training_state.pt", occurrence=3)
PLANS: dict[str, list[tuple[str | Kill, ...]]] = {
    "training": [(STATE_3, "temp"), ("window", "state")],
    "finetune": [("state", "window")],
    "conversion": [("temp",), ("window",), ("early",)],
    "benchmark": [("state",)],
}


def plan_params() -> list:
    """One test per writer; a writer whose resume option is not there yet is skipped."""
    params = []
    for name in PLANS:
        reason = WRITERS[name].missing()
        mark = pytest.mark.skipif(reason is not None, reason=reason or "")
        params.append(pytest.param(name, marks=mark, id=name))
    return params


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny inputs, made once (:func:`tests.fault_writers.build_inputs`)."""
    return build_inputs(tmp_path_factory.mktemp("faults") / "inputs")


@pytest.fixture(scope="module")
def references(
    inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Reference]:
    """A writer's uninterrupted run, made once for the tests that need it."""
    made: dict[str, Reference] = {}

    def reference(name: str) -> Reference:
        if name not in made:
            ws = tmp_path_factory.mktemp(f"{name}-reference")
            made[name] = reference_run(WRITERS[name], inputs, ws, fork=True)
        return made[name]

    return reference


@pytest.mark.parametrize("name", plan_params())
def test_a_killed_writer_loses_nothing_and_ends_as_if_never_killed(
    name, inputs, references, tmp_path
):
    """An uninterrupted run, then each trial of the writer's plan: a workspace whose run
    is killed once per mode (the first run, then its recovery), then recovered to the end."""
    writer, rng, reference = WRITERS[name], random.Random(23), references(name)
    for number, modes in enumerate(PLANS[name], start=1):
        ws = tmp_path / f"trial-{number}"
        trial = run_trial(writer, inputs, reference, ws, rng, modes, fork=True, number=number)
        kills = [describe(k) for k in trial.kills]
        assert not trial.problems, f"{name} trial {number}, kills {kills}: {trial.problems}"


def test_the_checks_see_what_a_careless_writer_would_do(tmp_path):
    """The checks are not vacuous: a lost, a changed and a stray file, a temporary
    left behind and truncated outputs are all reported."""
    ws, outputs = tmp_path, ["out"]
    for rel in ("notes.txt", "keep/a.txt", "gone.txt"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(rel)
    before = user_files(ws, outputs)
    (ws / "gone.txt").unlink()
    (ws / "keep" / "a.txt").write_text("changed")
    (ws / "stray.txt").write_text("x")
    (ws / ".out.tmp-host-123-ab12").write_text("")
    (ws / "out").mkdir()
    (ws / "out" / "results.json").write_text('{"a": [1, 2')
    torch.save({"w": torch.ones(3)}, ws / "out" / "state.pt")
    (ws / "out" / "state.pt").write_bytes((ws / "out" / "state.pt").read_bytes()[:40])
    problems = user_file_problems(ws, before, outputs, final=False)
    assert problems == ["lost: gone.txt", "changed: keep/a.txt", "appeared: stray.txt"]
    final = user_file_problems(ws, before, outputs, final=True)
    assert "left behind: .out.tmp-host-123-ab12" in final
    assert debris(ws) == ["left behind: .out.tmp-host-123-ab12"]
    unreadable = output_problems(ws, outputs)
    assert [p.split(" (")[0] for p in unreadable] == [
        "unreadable: out/results.json",
        "unreadable: out/state.pt",
    ]


def test_a_kill_aimed_at_a_temporary_lands_while_it_is_written(tmp_path):
    """The ``temp`` mode kills a writer while its atomic write is under way: here a
    writer that holds its temporary open for a second."""
    script = tmp_path / "slow_writer.py"
    script.write_text(
        "import sys, time\n"
        "from corect.common.files import atomic_target\n"
        "with atomic_target(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('partial')\n"
        "    time.sleep(30)\n"
    )
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()
    target.write_text(json.dumps({"old": True}))
    before = entries([target.parent])
    popen = subprocess.Popen([sys.executable, str(script), str(target)])
    kill = deliver(
        Kill("temp", target="result.json", occurrence=1),
        Process(popen.pid, popen),
        [target.parent],
        before,
    )
    assert kill.delivered and kill.hit, describe(kill)
    assert json.loads(target.read_text()) == {"old": True}  # the old version, complete
    assert len(debris(tmp_path)) == 1  # the temporary, until the next writer recovers it


@pytest.mark.skipif(WRITERS["training"].missing() is not None, reason="no --resume yet")
def test_a_run_killed_before_its_first_state_leaves_no_temporary(inputs, tmp_path):
    writer = WRITERS["training"]
    reference = reference_run(writer, inputs, tmp_path / "reference", fork=True)
    first_state = Kill("state", target="training_state.pt", occurrence=1)
    trial = run_trial(
        writer, inputs, reference, tmp_path / "trial", random.Random(0), [first_state], fork=True
    )
    assert trial.kills[0].hit, "the kill came after the write: nothing to see"
    assert not trial.problems, trial.problems
