"""The writers that :mod:`tests.faults` kills, each on tiny data in its own workspace:
how to lay out the user's files, run, recover after a kill, and check the outputs.

- ``training``: ``python -m corect.train`` (8 epochs of a tiny CORECT); recovered with
  ``--resume RUN_DIR`` when the run has a training state, else run again;
- ``finetune``: ``python -m data_prep.finetune_text`` (a tiny random BERT, state every 2
  steps); recovered with ``--resume`` when its state (or finished model) is there;
- ``conversion``: ``python -m data_prep.jsonl`` replacing an older dataset; run again;
- ``benchmark``: ``python -m corect.benchmark`` (2 tiny models x 1 seed); run again with
  the same ``--out``.

Every workspace holds ``inputs/`` (a copy of the inputs made once by :func:`build_inputs`)
and, beside each output, files of the user's (``notes.txt``, an earlier result) that
must stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.fault_kit import TEMPORARY, differences, figures, sha256, target_of

TINY_MODEL = [
    "data.modalities=t",
    "model.hidden_size=8",
    "model.encoder_heads=1",
    "model.pcm_heads=1",
    "model.gnn_heads=1",
    "model.pcm_self_layers=1",
    "model.pcm_layers=1",
    "train.batch_size=2",
    "train.figures=false",
]
EPOCHS = 8  # of the training writer
GROUP = "runs/tiny/t--emotion--corect"  # where the training runs go, below the workspace
FINETUNE = ["--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--save-every-steps", "2"]


@dataclass
class Scenario:
    """A writer's command in one workspace."""

    ws: Path
    argv: list[str]
    outputs: list[str]  # glob patterns, relative to ws, of what the writer creates or replaces
    watch: list[Path]  # folders polled while it runs (where its outputs and temporaries go)
    notes: dict[str, Any] = field(default_factory=dict)  # the writer's own (e.g. old figures)


@dataclass
class Writer:
    """How to run, recover and check one writer."""

    name: str
    module: str  # run as python -m <module>
    prepare: Callable[[Path, Path], Scenario]  # (workspace, inputs): lays out the user's files
    recovery: Callable[[Scenario], list[str]]  # the arguments that finish after a kill
    check: Callable[[Scenario, Any, bool], list[str]]  # (expected figures, final): problems
    figures: Callable[[Scenario], Any]  # what must equal the uninterrupted run's
    missing: Callable[[], str | None] = lambda: None  # why it cannot be tested yet
    state_names: tuple[str, ...] = ()  # its state files (kill mode "state")
    landed: Callable[[Scenario], str] = lambda scn: ""  # where a kill found it
    timeout: float = 600.0


def build_inputs(folder: Path) -> Path:
    """The inputs every workspace copies: a tiny dataset with texts (``data/``), a tiny
    random BERT (``base/``), dialogues in JSONL (``dialogues.jsonl``) and an older
    conversion of other dialogues (``old-dataset/``)."""
    folder.mkdir(parents=True)
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet), redirect_stderr(quiet):
        make_inputs(folder)
    return folder


def make_inputs(folder: Path) -> None:
    """:func:`build_inputs`' work."""
    from data_prep import jsonl
    from tests.test_finetune_text import tiny_bert, tiny_dataset
    from tests.test_reliability import dialogues, write_lines

    tiny_dataset(folder / "data")
    tiny_bert(folder / "base")
    many = [{**d, "id": f"{d['id']}-{k}"} for k in range(20) for d in dialogues()]
    write_lines(folder / "dialogues.jsonl", many)
    write_lines(folder / "old.jsonl", dialogues(shift=1.0))
    old = [str(folder / "old.jsonl"), "--modalities", "a", "--quiet"]
    assert jsonl.main([*old, "--out", str(folder / "old-dataset")]) == 0
    (folder / "old.jsonl").unlink()


def workspace(ws: Path, inputs: Path, *beside: str) -> None:
    """Copy the inputs into `ws`; put the user's notes in each folder of `beside`."""
    shutil.copytree(inputs, ws / "inputs")
    for folder in beside:
        (ws / folder).mkdir(parents=True, exist_ok=True)
        (ws / folder / "notes.txt").write_text(f"the user's notes in {folder}\n")


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """One sha256 of named tensors (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """The JSON value of a file."""
    return json.loads(path.read_text())


def checkpoint_problems(run: Path, ws: Path) -> list[str]:
    """A run's checkpoint.pt, when there, must hold the keys corect reads."""
    path = run / "checkpoint.pt"
    if not path.is_file():
        return []
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("state_dict", "config", "labels", "dims") if k not in checkpoint]
    return [f"{path.relative_to(ws)}: no {', '.join(missing)}"] if missing else []


def run_status(run: Path) -> str:
    """What a run's run.json says (``none`` without one)."""
    path = run / "run.json"
    return str(read_json(path).get("status")) if path.is_file() else "none"


# --- training --------------------------------------------------------------------------


def training_runs(scn: Scenario) -> list[Path]:
    """The run folders of the writer (``r``, ``r-1``, ...), oldest first."""
    runs = [p for p in (scn.ws / GROUP).glob("r*") if p.is_dir()]
    return sorted(runs, key=lambda p: int(p.name[2:] or 0))


def training_prepare(ws: Path, inputs: Path) -> Scenario:
    """``runs/notes.txt`` and an earlier run of the user's beside the new run ``r``."""
    workspace(ws, inputs, "runs")
    earlier = ws / GROUP / "earlier"  # a run of the user's, beside the new one
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text('{"test": {"weighted_f1": 0.5}}\n')
    argv = ["--quiet", "--set", f"data.path={ws / 'inputs' / 'data'}", *TINY_MODEL]
    argv += [f"train.epochs={EPOCHS}", f"train.runs_dir={ws / 'runs'}", "train.run_name=r"]
    return Scenario(ws, argv, [f"{GROUP}/r", f"{GROUP}/r-*"], [ws / "runs"])


def training_recovery(scn: Scenario) -> list[str]:
    """``--resume`` the latest run with a state (a completed one: to see it left as it
    is); without one, the same command again."""
    from corect.engine.checkpoints import TRAINING_STATE

    for run in reversed(training_runs(scn)):
        if (run / TRAINING_STATE).is_file() or run_status(run) == "completed":
            return ["--resume", str(run), "--quiet"]
    return scn.argv


def training_check(scn: Scenario, expected: Any, final: bool) -> list[str]:
    """Checkpoints hold what corect reads; a completed run has its metrics.json; at the
    end exactly one run completed (runs stopped before a state are left, interrupted)."""
    runs = training_runs(scn)
    problems = [p for run in runs for p in checkpoint_problems(run, scn.ws)]
    done = [run for run in runs if run_status(run) == "completed"]
    if final and len(done) != 1:
        problems.append(f"{len(done)} completed runs, not 1: {[r.name for r in runs]}")
    for run in done:
        if not (run / "metrics.json").is_file():
            problems.append(f"{run.relative_to(scn.ws)}: completed without metrics.json")
    return problems


def training_figures(scn: Scenario) -> dict[str, Any]:
    """The completed run's metrics.json and best weights."""
    (run,) = [run for run in training_runs(scn) if run_status(run) == "completed"]
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {
        "metrics": read_json(run / "metrics.json"),
        "weights": tensor_hash(checkpoint["state_dict"]),
        "best_epoch": checkpoint["epoch"],
    }


def training_landed(scn: Scenario) -> str:
    """Where a killed run was: in which epoch (its state holds the epochs finished),
    writing which files (the temporaries it left)."""
    from corect.engine.checkpoints import TRAINING_STATE

    runs = training_runs(scn)
    if not runs:
        return "before its run folder"
    if run_status(runs[-1]) == "completed":
        return "after it completed"
    state = runs[-1] / TRAINING_STATE
    done = 0
    if state.is_file():
        done = torch.load(state, map_location="cpu", weights_only=True)["progress"]["epoch"]
    where = f"in epoch {done + 1}" if done < EPOCHS else "after the last epoch"
    writing = sorted(target_of(p.name) for p in runs[-1].iterdir() if TEMPORARY.match(p.name))
    return where + (f", writing {', '.join(writing)}" if writing else "")


def has_option(module: str, option: str) -> str | None:
    """None when ``python -m module --help`` lists `option`, else why not."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    if option in parser.format_help():
        return None
    return f"python -m {module} has no {option} yet"


TRAINING = Writer(
    "training",
    "corect.train",
    training_prepare,
    training_recovery,
    training_check,
    training_figures,
    missing=lambda: has_option("corect.train", "--resume"),
    state_names=("training_state.pt",),
    landed=training_landed,
)


# --- fine-tuning -----------------------------------------------------------------------


def finetune_out(scn: Scenario) -> Path:
    """The model folder that the command writes (its --out)."""
    return Path(scn.argv[scn.argv.index("--out") + 1])


def finetune_prepare(ws: Path, inputs: Path) -> Scenario:
    """``models/notes.txt`` and another model of the user's beside ``models/ft``."""
    workspace(ws, inputs, "models")
    shutil.copytree(inputs / "base", ws / "models" / "earlier-model")  # the user's, beside
    argv = ["--data", str(ws / "inputs" / "data"), "--model", str(ws / "inputs" / "base")]
    argv += ["--out", str(ws / "models" / "ft"), *FINETUNE, "--quiet"]
    return Scenario(ws, argv, ["models/ft", "models/ft.resume.pt"], [ws / "models"])


def finetune_recovery(scn: Scenario) -> list[str]:
    """``--resume`` when the run saved a state (or finished: to see it left as it is),
    else the same command again (``--resume`` without a state is refused)."""
    from corect.data.text_model import RECORD_FILE
    from data_prep.finetuning.resume import state_path

    out = finetune_out(scn)
    if state_path(out).is_file() or (out / RECORD_FILE).is_file():
        return [*scn.argv, "--resume"]
    return scn.argv


def finetune_check(scn: Scenario, expected: Any, final: bool) -> list[str]:
    """A model folder, when there, is complete and the reference's; the state is
    removed once the model is written."""
    from data_prep.finetuning.resume import state_path

    out, problems = finetune_out(scn), []
    if out.exists():
        names = {p.name for p in out.iterdir()}
        wanted = set(expected["files"]) if expected else {"corect_finetune.json"}
        if not wanted <= names:
            problems.append(f"models/ft is incomplete: no {', '.join(sorted(wanted - names))}")
        elif expected is not None:
            got = figures(finetune_figures(scn), scn.ws)
            problems += [f"models/ft differs: {d}" for d in differences(got, expected)]
    if final and state_path(out).exists():
        problems.append(f"left behind: {state_path(out).relative_to(scn.ws)}")
    return problems


def finetune_figures(scn: Scenario) -> dict[str, Any]:
    """The model folder's file names, the weights' hashes and the record."""
    out = finetune_out(scn)
    return {
        "files": sorted(p.name for p in out.iterdir()),
        "weights": {p.name: sha256(p) for p in sorted(out.glob("*.safetensors"))},
        "record": read_json(out / "corect_finetune.json"),
    }


FINETUNE_TEXT = Writer(
    "finetune",
    "data_prep.finetune_text",
    finetune_prepare,
    finetune_recovery,
    finetune_check,
    finetune_figures,
    missing=lambda: has_option("data_prep.finetune_text", "--resume"),
    state_names=("ft.resume.pt",),
)


# --- a dataset conversion --------------------------------------------------------------


def dataset_files(folder: Path, ws: Path) -> dict[str, str]:
    """sha256 of each file of a dataset folder (the manifest's with the workspace's
    path written ``<ws>``: it names the source file)."""
    hashes = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = folder / "manifest.json"
    if manifest.is_file():
        text = manifest.read_text().replace(str(ws), "<ws>")
        hashes[manifest.name] = hashlib.sha256(text.encode()).hexdigest()
    return hashes


def conversion_prepare(ws: Path, inputs: Path) -> Scenario:
    """``datasets/mine`` holds an older conversion (replaced), ``datasets/other`` a
    dataset of the user's, ``datasets/notes.txt`` notes."""
    workspace(ws, inputs, "datasets")
    shutil.copytree(inputs / "data", ws / "datasets" / "other")  # the user's, beside
    mine = ws / "datasets" / "mine"
    shutil.copytree(inputs / "old-dataset", mine)  # the old version, to be replaced
    argv = [str(ws / "inputs" / "dialogues.jsonl"), "--modalities", "a"]
    argv += ["--out", str(mine), "--quiet"]
    scn = Scenario(ws, argv, ["datasets/mine"], [ws / "datasets"])
    scn.notes["old"] = dataset_files(mine, ws)
    return scn


def conversion_check(scn: Scenario, expected: Any, final: bool) -> list[str]:
    """``datasets/mine`` is the old dataset or the new one, and loads; missing, it is
    beside, moved aside whole (the next writer or reader puts it back)."""
    from corect.data.format import load_dataset

    mine, old = scn.ws / "datasets" / "mine", scn.notes["old"]
    if not mine.is_dir():
        aside = [p for p in mine.parent.iterdir() if p.name.startswith(".mine.old-")]
        if final or len(aside) != 1 or dataset_files(aside[0], scn.ws) != old:
            return ["datasets/mine is missing, and not aside whole to be put back"]
        return []
    got = dataset_files(mine, scn.ws)
    if got != old and expected is not None and got != expected:
        changed = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        return [f"datasets/mine is neither the old dataset nor the new one: {changed}"]
    with tempfile.TemporaryDirectory() as scratch:  # a reader recovers: not in the workspace
        copy = shutil.copytree(mine, Path(scratch) / "mine")
        try:
            load_dataset(copy)
        except Exception as err:
            return [f"datasets/mine does not load: {err}"]
    return []


CONVERSION = Writer(
    "conversion",
    "data_prep.jsonl",
    conversion_prepare,
    lambda scn: scn.argv,
    conversion_check,
    lambda scn: dataset_files(scn.ws / "datasets" / "mine", scn.ws),
)


# --- a benchmark -----------------------------------------------------------------------


def benchmark_prepare(ws: Path, inputs: Path) -> Scenario:
    """``bench/notes.txt`` beside the benchmark's ``bench/out``."""
    workspace(ws, inputs, "bench")
    argv = ["--models", "corect,early", "--seeds", "1", "--out", str(ws / "bench" / "out")]
    argv += ["--set", f"data.path={ws / 'inputs' / 'data'}", *TINY_MODEL, "train.epochs=3"]
    argv += [f"train.runs_dir={ws / 'bench'}"]
    return Scenario(ws, argv, ["bench/out"], [ws / "bench"])


def benchmark_check(scn: Scenario, expected: Any, final: bool) -> list[str]:
    """Its runs' checkpoints load; results.json, once complete, is the reference's."""
    out = scn.ws / "bench" / "out"
    problems = [p for run in sorted(out.glob("runs/*")) for p in checkpoint_problems(run, scn.ws)]
    results = out / "results.json"
    if final and not (results.is_file() and read_json(results).get("complete")):
        problems.append("bench/out/results.json is missing or not complete")
    elif not final and results.is_file() and expected is not None:
        if read_json(results).get("complete"):
            got = figures(benchmark_figures(scn), scn.ws)
            problems += [f"complete results differ: {d}" for d in differences(got, expected)]
    return problems


def benchmark_figures(scn: Scenario) -> dict[str, Any]:
    """results.json and each run's metrics.json."""
    out = scn.ws / "bench" / "out"
    results = read_json(out / "results.json")
    runs = [r["run_dir"] for model in results["models"].values() for r in model["runs"]]
    return {
        "results": results,
        "runs": {run: read_json(out / run / "metrics.json") for run in runs},
    }


BENCHMARK = Writer(
    "benchmark",
    "corect.benchmark",
    benchmark_prepare,
    lambda scn: scn.argv,
    benchmark_check,
    benchmark_figures,
    state_names=("training_state.pt",),
)
WRITERS = {w.name: w for w in (TRAINING, FINETUNE_TEXT, CONVERSION, BENCHMARK)}
