"""The reliability catalogue: bad inputs and faults that once lost data, gave tracebacks or
were accepted silently. Each case must give a clear error naming the right thing, or a
correct result, and lose nothing."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from corect import evaluate, predict
from corect.common.errors import InputError
from corect.common.files import HOST, atomic_directory, recover
from corect.config import ConfigError, SyntheticConfig, load_config
from corect.data import format as format_module
from corect.data.dataset import DialogueRecord
from corect.data.format import DatasetError, load_dataset, write_dataset
from corect.data.jsonl import JsonlError
from corect.data.synthetic import ensure_synthetic_dataset
from corect.engine.checkpoints import (
    CheckpointError,
    abandon_run,
    load_checkpoint,
    run_status,
    write_run_status,
)
from corect.engine.training import DivergedError, train
from data_prep import jsonl as jsonl_converter
from data_prep.options import ConversionError
from data_prep.release import read_feature_release
from tests.conftest import tiny_config

LABELS = ["joy", "sad", "neutral"]
REPO = Path(__file__).resolve().parents[1]


def dialogues(shift: float = 0.0) -> list[dict[str, Any]]:
    """Ten small dialogues with 4-d audio features: 6 train, 2 dev, 2 test."""
    rng = np.random.default_rng(0)
    out = []
    for d, split in enumerate(["train"] * 6 + ["dev"] * 2 + ["test"] * 2):
        utterances = [
            {
                "speaker": "AB"[k % 2],
                "label": LABELS[(d + k) % 3],
                "features": {"audio": (rng.normal(size=4) + shift).round(4).tolist()},
            }
            for k in range(3 + d % 3)
        ]
        out.append({"id": f"d{d}", "split": split, "utterances": utterances})
    return out


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def convert(source: Path, out: Path, *extra: str) -> list[str]:
    return [str(source), "--modalities", "a", "--out", str(out), "--quiet", *extra]


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name -> content)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny run trained on a converted JSONL dataset (about a second)."""
    root = tmp_path_factory.mktemp("reliability")
    source = write_lines(root / "dialogues.jsonl", dialogues())
    data = root / "data"
    jsonl_converter.convert(convert(source, data, "--labels", ",".join(LABELS)))
    config = load_config(
        None,
        [
            f"data.path={data}",
            "data.modalities=a",
            "model.hidden_size=8",
            "model.encoder_heads=1",
            "model.pcm_heads=1",
            "model.gnn_heads=1",
            "model.pcm_self_layers=1",
            "model.pcm_layers=1",
            "train.epochs=1",
            "train.batch_size=3",
            "train.progress=false",
            "train.figures=false",
            f"train.runs_dir={root / 'runs'}",
        ],
    )
    return {"root": root, "source": source, "data": data, "run": train(config)}


# --- 1. writers never remove what they did not write --------------------------------------


def test_out_that_is_a_foreign_folder_is_refused_and_kept(tmp_path, capsys):
    source = write_lines(tmp_path / "mine" / "good.jsonl", dialogues())
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    before = tree(tmp_path / "mine")
    assert jsonl_converter.main(convert(source, tmp_path / "mine")) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'mine'}" in err and "input" in err
    assert tree(tmp_path / "mine") == before
    # A foreign folder that holds no input: refused too, saying it is not a dataset.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("x")
    assert jsonl_converter.main(convert(source, tmp_path / "other")) == 2
    assert "is not a corect dataset" in capsys.readouterr().err
    assert (tmp_path / "other" / "a.txt").read_text() == "x"


def test_out_equal_to_the_input_file_or_the_current_folder_is_refused(
    tmp_path, capsys, monkeypatch
):
    source = write_lines(tmp_path / "good.jsonl", dialogues())
    before = tree(tmp_path)
    assert jsonl_converter.main(convert(source, source)) == 2
    assert "input" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert jsonl_converter.main(convert(source, Path("."))) == 2
    assert "current folder" in capsys.readouterr().err
    assert tree(tmp_path) == before  # nothing moved aside, nothing hidden added


def test_our_dataset_is_replaced_but_not_a_file_added_to_it(tmp_path):
    source = write_lines(tmp_path / "good.jsonl", dialogues())
    out = tmp_path / "data"
    jsonl_converter.convert(convert(source, out))
    jsonl_converter.convert(convert(source, out, "--labels", "sad,joy,neutral"))
    assert load_dataset(out).labels == ["sad", "joy", "neutral"]
    (out / "README.md").write_text("my notes")
    with pytest.raises(ConversionError, match=r"holds 'README.md'"):
        jsonl_converter.convert(convert(source, out))
    with pytest.raises(InputError, match=r"README.md"):  # the writer itself refuses too
        write_dataset(out, name="n", task="t", labels=["a"], dims={"a": 4}, splits={})
    assert (out / "README.md").read_text() == "my notes"


# --- 2. evaluate, predict, compare_modes check the data against the checkpoint ------------


def test_evaluate_refuses_a_reconverted_dataset(run, tmp_path, capsys):
    run_dir, data, source = run["run"], run["data"], run["source"]
    argv = ["--run", str(run_dir), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    written = (run_dir / "eval-test.json").read_bytes()
    try:
        # The same data with another label order, where the run expects its dataset.
        jsonl_converter.convert(convert(source, data, "--labels", "neutral,joy,sad"))
        assert evaluate.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{data} is not the data {run_dir} was trained on" in err
        assert "labels are neutral, joy, sad" in err
        # Same labels, other contents: the fingerprint tells.
        changed = write_lines(tmp_path / "changed.jsonl", dialogues(shift=0.5))
        jsonl_converter.convert(convert(changed, data, "--labels", ",".join(LABELS)))
        assert evaluate.main(argv) == 2
        assert "its contents differ" in capsys.readouterr().err
        assert (run_dir / "eval-test.json").read_bytes() == written
    finally:  # converted again as it was: the same fingerprint, accepted
        jsonl_converter.convert(convert(source, data, "--labels", ",".join(LABELS)))
    assert evaluate.main(argv) == 0


def test_an_old_checkpoint_without_fingerprint_loads_with_a_warning(run, tmp_path, caplog):
    old = tmp_path / "old-run"
    old.mkdir()
    checkpoint = torch.load(run["run"] / "checkpoint.pt", weights_only=True)
    for key in ("fingerprint", "text_features"):
        del checkpoint[key]
    torch.save(checkpoint, old / "checkpoint.pt")
    (old / "metrics.json").write_text("{}")
    metrics = evaluate.evaluate_run(old, device="cpu")
    assert 0 <= metrics["accuracy"] <= 1
    assert "no dataset fingerprint" in caplog.text


def test_predict_refuses_an_output_that_is_a_folder_or_the_input(run, tmp_path, capsys):
    source = write_lines(tmp_path / "in.jsonl", dialogues()[:2])
    before = source.read_bytes()
    argv = ["--run", str(run["run"]), "--input", str(source), "--device", "cpu"]
    assert predict.main([*argv, "--output", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert predict.main([*argv, "--output", str(source)]) == 2
    assert "also the input" in capsys.readouterr().err
    assert source.read_bytes() == before
    assert predict.main([*argv, "--output", str(tmp_path / "out.jsonl")]) == 0


def test_compare_modes_refuses_runs_on_other_data(run, tmp_path, capsys):
    from corect.compare_modes import main

    other = tmp_path / "other"
    changed = write_lines(tmp_path / "changed.jsonl", dialogues(shift=1.0))
    jsonl_converter.convert(convert(changed, other, "--labels", ",".join(LABELS)))
    config = load_config(
        run["run"] / "config.yaml",
        [f"data.path={other}", "model.causal=true", f"train.runs_dir={tmp_path / 'runs'}"],
    )
    causal = train(config)
    code = main(["--runs", str(run["run"]), "--causal-runs", str(causal)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"not the data {causal} was trained on" in err and "Traceback" not in err


# --- 3. config validation and diverged runs -------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.early_stopping=-1", "train.early_stopping"),
        ("data.synthetic.dims={t: 0}", "data.synthetic.dims.t"),
        ("train.grad_clip=-5", "train.grad_clip"),
        ("model.encoders.tt=lstm", "model.encoders.tt"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("train.scheduler_factor=2", "train.scheduler_factor"),
        ("train.seed=-1", "train.seed"),
        ("model.num_speakers=-1", "model.num_speakers"),
        ("data.synthetic.dims={x: 3}", "data.synthetic.dims.x"),
        ("model.gate_bias=.inf", "model.gate_bias"),
    ],
)
def test_bad_config_values_name_the_key(tmp_path, capsys, override, key):
    from corect.train import main

    with pytest.raises(ConfigError, match=rf"{key}\b"):
        load_config(None, [override])
    assert main(["--set", override, f"train.runs_dir={tmp_path}"]) == 2
    assert key in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run folder holding only config.yaml


def test_a_diverged_run_fails_and_leaves_nothing(tmp_path):
    config = tiny_config(tmp_path, train={"lr": 1e30, "epochs": 3, "batch_size": 2})
    with pytest.raises(DivergedError, match=r"loss is nan at epoch 1.*lower train.lr"):
        train(config)
    assert not list((tmp_path / "runs").rglob("*"))  # no folder, no metrics.json


def test_a_failed_run_with_a_checkpoint_is_marked_failed(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    write_run_status(run_dir, "running")
    assert run_status(run_dir) == "running"
    err = DivergedError("training diverged")
    abandon_run(run_dir, err)
    assert run_status(run_dir) == "failed: training diverged"
    assert "marked failed" in str(err)
    (run_dir / "run.json").write_text("[1]")
    assert run_status(run_dir).startswith("unknown")


def test_a_run_stopped_by_a_scheduler_is_marked_stopped(tmp_path):
    """Ray Tune's ASHA ends a trial by raising SystemExit inside the epoch callback."""

    def stop_after_two(figures):
        if figures["epoch"] == 2:
            raise SystemExit(0)

    config = tiny_config(tmp_path, train={"epochs": 4})
    with pytest.raises(SystemExit):
        train(config, on_epoch=stop_after_two, test=False)
    (run_dir,) = {p.parent for p in (tmp_path / "runs").rglob("run.json")}
    assert run_status(run_dir) == "stopped: stopped from outside (exit 0)"
    assert not (run_dir / "metrics.json").exists()


# --- 4. corrupt files are named ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("test.safetensors", lambda b: b[: len(b) // 2], "not a readable safetensors"),
        ("test.safetensors", lambda b: b"", "not a readable safetensors"),
        ("train.texts.json", lambda b: b[: len(b) // 2], "not valid JSON"),
        ("manifest.json", lambda b: bytes(range(256)), "not a text file"),
        (
            "manifest.json",
            lambda b: json.dumps({**json.loads(b), "modalities": "a"}).encode(),
            "field 'modalities'",
        ),
    ],
)
def test_corrupt_dataset_files_are_named(tmp_path, name, damage, message):
    records = {
        split: [DialogueRecord(f"{split}0", ["A", "B"], [0, 1], {"a": np.ones((2, 3))}, ["x", "y"])]
        for split in ("train", "dev", "test")
    }
    write_dataset(
        tmp_path / "ds", name="n", task="t", labels=["p", "q"], dims={"a": 3}, splits=records
    )
    path = tmp_path / "ds" / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(tmp_path / "ds")
    assert name in str(info.value)


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda good: good[: len(good) // 2], "not a readable checkpoint"),
        (lambda good: b"", "not a readable checkpoint"),
        (lambda good: b"garbage" * 20, "not a (readable )?checkpoint"),
        (None, "refused"),
    ],
)
def test_corrupt_checkpoints_are_named(run, tmp_path, capsys, content, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "checkpoint.pt"
    if content is None:
        torch.save({"state_dict": Evil()}, path)
    else:
        path.write_bytes(content((run["run"] / "checkpoint.pt").read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(run_dir)
    assert evaluate.main(["--run", str(run_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and "pwned" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"- 1\n- 2\n", "got a list"),
        (b"just words\n", "got a str"),
        (b"\xff\xfe\x00", "not a text"),
    ],
)
def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("number", ["1e39", str(10**400)])
def test_jsonl_numbers_beyond_float32_are_named(tmp_path, number):
    lines = dialogues()
    lines[1]["utterances"][2]["features"]["audio"][1] = 0.0
    text = json.dumps(lines[1]).replace("0.0]", f"{number}]", 1).replace(", 0.0,", f", {number},")
    source = write_lines(tmp_path / "bad.jsonl", [lines[0], text])
    with pytest.raises(JsonlError, match=r"line 2, dialogue 'd1', utterance 2: .*beyond float32"):
        jsonl_converter.convert(convert(source, tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# --- 5. train/test leakage -----------------------------------------------------------------


def test_a_release_with_a_test_dialogue_in_train_is_refused(tmp_path):
    speakers = {v: ["M", "F"] for v in ("a", "b", "c")}
    rest = [{v: [[0.0], [0.0]] for v in speakers} for _ in range(5)]
    release = ({}, speakers, *rest, ["a", "b"], ["b", "c"])
    (tmp_path / "r.pkl").write_bytes(pickle.dumps(release, protocol=2))
    with pytest.raises(
        ConversionError, match=r"dialogue 'b' is in both 'train_ids' and 'test_ids'"
    ):
        read_feature_release(tmp_path / "r.pkl")


def test_dialogue_ids_are_unique_across_splits_on_write_and_load(tmp_path):
    def record(name: str) -> DialogueRecord:
        return DialogueRecord(name, ["A"], [0], {"a": np.zeros((1, 2))})

    splits = {"train": [record("x"), record("y")], "test": [record("y")]}
    with pytest.raises(DatasetError, match=r"dialogue 'y' is listed in splits 'train' and 'test'"):
        write_dataset(
            tmp_path / "ds", name="n", task="t", labels=["p"], dims={"a": 2}, splits=splits
        )
    assert not (tmp_path / "ds").exists()
    splits["test"] = [record("z")]
    write_dataset(tmp_path / "ds", name="n", task="t", labels=["p"], dims={"a": 2}, splits=splits)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["splits"]["test"]["dialogues"] = ["x"]
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"dialogue 'x' is listed in splits 'train' and 'test'"):
        load_dataset(tmp_path / "ds")


# --- 6. faults leave no debris, and replacements stay recoverable --------------------------


def test_leftovers_of_dead_writers_are_cleaned_and_others_kept(tmp_path):
    source = write_lines(tmp_path / "good.jsonl", dialogues())
    out = tmp_path / "data"
    pid = dead_pid()
    stale_dir = tmp_path / f".data.tmp-{HOST}-{pid}-abc123"
    stale_dir.mkdir()
    (stale_dir / "train.safetensors").write_bytes(b"0" * 1000)
    live = tmp_path / f".data.tmp-{HOST}-{os.getpid()}-live"  # a writer still running
    live.mkdir()
    foreign = tmp_path / ".data.tmp-by-someone-else"
    foreign.mkdir()
    jsonl_converter.convert(convert(source, out))
    assert not stale_dir.exists() and live.is_dir() and foreign.is_dir()
    # A killed checkpoint save left a 0-byte temporary: the next load removes it.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    temporary = run_dir / f".checkpoint.pt.tmp-{HOST}-{pid}-x1y2"
    temporary.write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(run_dir)
    assert not temporary.exists()


KILLED_WRITER = """
import os, sys
from pathlib import Path
import numpy as np
from corect.data.dataset import DialogueRecord
from corect.data.format import write_dataset
renames = []
original = Path.rename
def rename(self, target):
    renames.append(target)
    if len(renames) == 2:  # killed between moving the old dataset aside and the new in
        os._exit(9)
    return original(self, target)
Path.rename = rename
record = DialogueRecord("new", ["A"], [0], {"a": np.zeros((1, 2))})
write_dataset(sys.argv[1], name="new", task="t", labels=["p"], dims={"a": 2},
              splits={"train": [record]})
"""


def test_a_kill_between_the_renames_of_a_replacement_is_recovered(tmp_path):
    out = tmp_path / "ds"
    record = DialogueRecord("old", ["A"], [0], {"a": np.ones((1, 2))})
    write_dataset(
        out, name="old", task="t", labels=["p"], dims={"a": 2}, splits={"train": [record]}
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], env=env, check=False)
    assert done.returncode == 9
    assert not out.exists()  # the old dataset is aside, the new one not yet in place
    assert len(list(tmp_path.glob(".ds.old-*"))) == 1
    assert load_dataset(out).name == "old"  # put back automatically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_replacement_refuses_a_foreign_folder_before_writing(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("1")
    with pytest.raises(InputError, match="not ours"):
        with atomic_directory(tmp_path / "x", lambda path: "is not ours"):
            raise AssertionError("never reached")
    assert (tmp_path / "x" / "keep").read_text() == "1"
    recover(tmp_path / "x")  # nothing of ours to do
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def _finished_by_another_process(path):
    """What a concurrent writer does while ours is still filling its temporary folder."""
    path.mkdir()
    (path / "theirs").write_text("1")


def test_a_cache_written_meanwhile_by_another_process_is_kept(tmp_path):
    with atomic_directory(tmp_path / "c", lambda path: None, keep_existing=True) as tmp:
        (tmp / "ours").write_text("2")
        _finished_by_another_process(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # ours is gone, no leftovers


def test_an_output_written_meanwhile_by_another_process_is_replaced(tmp_path):
    with atomic_directory(tmp_path / "c", lambda path: None) as tmp:
        (tmp / "ours").write_text("2")
        _finished_by_another_process(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ours"]  # last one wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_an_output_taken_at_the_final_rename_is_a_clear_error(tmp_path, monkeypatch):
    original = Path.rename

    def rename_after_another_process(self, target):
        _finished_by_another_process(Path(target))  # in the last instant before ours
        return original(self, target)

    with pytest.raises(InputError, match="another process wrote it"):
        with atomic_directory(tmp_path / "c", lambda path: None) as tmp:
            (tmp / "ours").write_text("2")
            monkeypatch.setattr(Path, "rename", rename_after_another_process)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_concurrent_first_uses_of_the_synthetic_cache_all_succeed(tmp_path, monkeypatch):
    """Trials of a sweep start together and each find the cache empty (CI once failed
    with 'Directory not empty' when the second one renamed its copy into place). Here
    four writers are held until all have written their copy, then commit together."""
    config = SyntheticConfig(train_dialogues=20, dev_dialogues=2, test_dialogues=2)
    all_written = threading.Barrier(4, timeout=60)
    validate = format_module.load_dataset

    def validate_then_wait(path):  # write_dataset validates its copy just before commit
        dataset = validate(path)
        all_written.wait()
        return dataset

    monkeypatch.setattr(format_module, "load_dataset", validate_then_wait)
    with ThreadPoolExecutor(4) as pool:
        paths = set(pool.map(lambda _: ensure_synthetic_dataset(config, tmp_path), range(4)))
    assert len(paths) == 1
    assert validate(paths.pop()).splits["train"].num_dialogues == 20
    assert len(list(tmp_path.iterdir())) == 1  # no temporary copies left


def test_an_interrupted_run_is_scored_with_a_warning(run, tmp_path, caplog):
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "checkpoint.pt").write_bytes((run["run"] / "checkpoint.pt").read_bytes())
    (copy / "run.json").write_text(
        json.dumps({"status": "running", "host": HOST, "pid": dead_pid()})
    )
    assert run_status(copy).startswith("interrupted")
    evaluate.evaluate_run(copy, device="cpu")
    assert "did not complete (interrupted" in caplog.text
    assert run_status(run["run"]) == "completed"
