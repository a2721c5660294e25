"""Figures: each is drawn with its labels and class names, written as a PNG, and a
failure to draw never fails a training run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from corect.common import plots
from corect.evaluate import evaluate_run
from corect.train import train
from tests.conftest import tiny_config

LABELS = ["neutral", "joy", "sadness", "anger"]
PNG = b"\x89PNG\r\n\x1a\n"


def ticks(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_confusion_figure_names_both_axes_and_shows_counts_and_recall() -> None:
    confusion = [[8, 2, 0, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 1, 1, 2]]
    title = plots.run_title("meld", "corect", True, "dev")
    assert title == "meld · corect (causal) · dev"
    figure = plots.confusion_figure(confusion, LABELS, title)
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert ticks(ax.xaxis) == LABELS and ticks(ax.yaxis) == LABELS
    assert "meld · corect (causal) · dev" in ax.get_title()
    assert "18 utterances, accuracy 72.2%" in ax.get_title()
    cells = texts(ax)
    assert len(cells) == 16
    assert cells[0] == "8\n80%" and cells[1] == "2\n20%"  # row-normalised: recall
    assert cells[15] == "2\n50%"
    assert cells[8:12] == ["0"] * 4  # a class with no utterances: no percentages
    assert "row %" in figure.axes[1].get_ylabel()  # the colour bar
    with pytest.raises(ValueError, match="shape"):
        plots.confusion_figure([[1, 2], [3, 4]], LABELS, title)


def test_save_figure_writes_a_small_png_atomically(tmp_path: Path) -> None:
    figure = plots.confusion_figure([[3, 1], [0, 2]], LABELS[:2], "t")
    path = plots.save_figure(figure, tmp_path / "sub" / "confusion-test.png")
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) < 150_000
    assert [p.name for p in path.parent.iterdir()] == ["confusion-test.png"]


def test_benchmark_figure_modes_side_by_side_and_references_marked() -> None:
    scores = [
        plots.ModelScores("corect", "offline", [60.0, 62.0], [50.0, 52.0]),
        plots.ModelScores("corect", "causal", [58.0, 57.0], [48.0, 47.0]),
        plots.ModelScores("context", "offline", [55.0], [45.0], reference=True),
        plots.ModelScores("context", "causal", [54.0], [44.0], reference=True),
    ]
    figure = plots.benchmark_figure(scores, "Benchmark meld")
    wf1, mf1 = figure.axes
    assert (wf1.get_xlabel(), mf1.get_xlabel()) == ("test weighted F1 (%)", "test macro F1 (%)")
    assert ticks(wf1.yaxis) == ["corect", "context"]
    corect, context = wf1.get_yticklabels()
    assert context.get_fontstyle() == "italic" and corect.get_fontstyle() == "normal"
    assert legend(mf1) == ["offline", "causal"]
    assert "61.0" in texts(wf1) and "57.5" in texts(wf1)  # the means
    assert "Benchmark meld" in figure.get_suptitle() and "references" in figure.get_suptitle()
    # One mode: no legend needed.
    single = plots.benchmark_figure(scores[:1], "b")
    assert single.axes[1].get_legend() is None and ticks(single.axes[0].yaxis) == ["corect"]


def test_modes_figure_position_curve_and_class_difference() -> None:
    buckets = ["1-5", "6-10", "11-20", "21+"]
    position_f1 = {
        "offline": [[70.0, 72.0, 74.0, math.nan], [71.0, 73.0, 75.0, math.nan]],
        "causal": [[60.0, 66.0, 71.0, math.nan], [62.0, 64.0, 70.0, math.nan]],
    }
    differences = [(-3.0, 1.0), (1.5, 0.5), (0.0, 0.0), (-8.0, 2.0)]
    figure = plots.modes_figure(
        buckets, [50, 40, 30, 0], position_f1, LABELS, differences, "Offline vs causal: x"
    )
    left, right = figure.axes
    assert left.get_xlabel() == "position in the dialogue (utterances)"
    assert left.get_ylabel() == "weighted F1 (%)"
    assert ticks(left.xaxis) == ["1-5\n(n=50)", "6-10\n(n=40)", "11-20\n(n=30)", "21+\n(n=0)"]
    assert legend(left) == ["offline (2 seeds)", "causal (2 seeds)"]
    assert right.get_xlabel() == "F1 causal − offline (points)"
    assert ticks(right.yaxis) == LABELS
    assert [p.get_width() for p in right.patches] == [-3.0, 1.5, 0.0, -8.0]


def test_latency_figure_recognizer_against_recompute() -> None:
    rows = [
        {"position": p, "median_ms": 30.0, "p99_ms": 35.0, "recompute_median_ms": 30.0 + p}
        for p in (10, 50, 100)
    ]
    figure = plots.latency_figure(rows, "Streaming latency, untrained corect")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "position in the dialogue (utterance index, 0-based)"
    assert ax.get_ylabel() == "latency per utterance (ms)"
    assert legend(ax) == [
        "streaming recognizer, median",
        "streaming recognizer, p99",
        "recompute the whole history, median",
    ]
    assert "Streaming latency" in ax.get_title()


def test_never_fatal_logs_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "corect.common.plots"), plots.never_fatal("a figure"):
        raise RuntimeError("no display")
    assert "could not draw a figure: RuntimeError: no display" in caplog.text


def test_training_and_evaluation_draw_labelled_confusion_matrices(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config(tmp_path, train={"figures": True}))
    for split in ("dev", "test"):
        assert (run / f"confusion-{split}.png").read_bytes().startswith(PNG)
    events = EventAccumulator(str(run))
    events.Reload()
    assert set(events.Tags()["images"]) == {"confusion/dev", "confusion/test"}
    (run / "confusion-dev.png").unlink()
    evaluate_run(run, "dev", device="cpu")
    assert (run / "confusion-dev.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("error", [ImportError("No module named 'matplotlib'"), OSError("full")])
def test_a_failure_to_draw_never_fails_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error
) -> None:
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(plots, "new_figure", broken)
    with caplog.at_level(logging.WARNING, "corect"):
        run = train(tiny_config(tmp_path, train={"figures": True}))
    assert (run / "metrics.json").is_file() and not list(run.glob("*.png"))
    assert "could not draw the test confusion matrix" in caplog.text
    assert "could not draw the dev confusion matrix" in caplog.text
