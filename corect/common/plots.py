"""Figures: data in, a matplotlib :class:`~matplotlib.figure.Figure` out.

Every function here is pure (no pyplot, no global state, the Agg canvas only) and
imports matplotlib when called, so ``import corect`` stays fast. The commands draw with
them and write with :func:`save_figure`; a figure that fails to draw must never fail the
run that asked for it, so they call them inside :func:`never_fatal`:

- :func:`confusion_figure`: ``confusion-<split>.png`` of ``corect.train`` and
  ``corect.evaluate``, and the TensorBoard images ``confusion/dev`` and ``confusion/test``;
- :func:`benchmark_figure`: ``results.png`` of ``corect.benchmark``;
- :func:`modes_figure`: ``results.png`` of ``corect.compare_modes``;
- :func:`latency_figure`: the ``--figure`` of ``corect.stream --bench``.
"""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from corect.common.files import atomic_target

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger("corect.common.plots")

DPI = 110
MODE_COLORS = {"offline": "tab:blue", "causal": "tab:orange"}
REFERENCE_COLOR = "0.45"


@contextmanager
def never_fatal(what: str) -> Iterator[None]:
    """Run the block; if it raises (matplotlib missing or failing, a full disk, ...) log a
    warning naming `what` and carry on."""
    try:
        yield
    except Exception as err:  # a figure is never worth a failed run
        log.warning("could not draw %s: %s: %s", what, type(err).__name__, err)


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot, no display), sized in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write `figure` to `path` (format from its suffix, PNG by default) atomically."""
    path = Path(path)
    with atomic_target(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path


def render_png(figure: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes. Drawing (text layout above all) is the slow part, so a
    figure wanted both as a file and in TensorBoard is drawn once, here."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_pixels(png: bytes) -> np.ndarray:
    """Decode PNG bytes to an ``[H, W, 3]`` uint8 array (for ``SummaryWriter.add_image``
    with ``dataformats="HWC"``)."""
    from matplotlib.image import imread

    rgba = imread(io.BytesIO(png), format="png")
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def run_title(dataset: str, model: str, causal: bool, split: str) -> str:
    """``dataset · model (offline|causal) · split``."""
    return f"{dataset} · {model} ({'causal' if causal else 'offline'}) · {split}"


def wrap(text: str, width: int = 80) -> str:
    """`text` with every line wrapped at `width` characters."""
    return "\n".join(part for line in text.splitlines() for part in textwrap.wrap(line, width))


# --- confusion matrix -----------------------------------------------------------------


def confusion_figure(
    confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str
) -> Figure:
    """The confusion matrix (rows true, columns predicted, class names on both axes):
    each cell shows its count and its share of the row (the true class's recall on the
    diagonal); the colour is that share."""
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} labels")
    support = counts.sum(1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    size = 2.0 + 0.8 * n
    figure = new_figure(size + 1.2, size + 0.4)
    ax = figure.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class (row %)")
    ax.set_xticks(range(n), labels, rotation=40, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in np.ndindex(n, n):
        text = f"{counts[i, j]}\n{100 * share[i, j]:.0f}%" if support[i, 0] else "0"
        color = "white" if share[i, j] > 0.55 else "black"
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title(wrap(f"{title}\n{total} utterances, accuracy {100 * accuracy:.1f}%", 60))
    return figure


def save_confusion(
    run_dir: str | Path,
    split: str,
    confusion: Sequence[Sequence[int]],
    labels: Sequence[str],
    title: str,
) -> bytes | None:
    """Draw and write ``run_dir/confusion-<split>.png``; its PNG bytes, or None (and a
    warning) when it could not be drawn."""
    with never_fatal(f"the {split} confusion matrix"):
        png = render_png(confusion_figure(confusion, labels, title))
        with atomic_target(Path(run_dir) / f"confusion-{split}.png") as tmp:
            tmp.write_bytes(png)
        return png
    return None


# --- benchmark ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelScores:
    """One model's test scores in one mode, one value per seed, in %."""

    model: str
    mode: str
    weighted_f1: Sequence[float]
    macro_f1: Sequence[float]
    reference: bool = False


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def present_modes(modes: Sequence[str]) -> list[str]:
    """The modes among `modes`, offline first."""
    known = [m for m in MODE_COLORS if m in modes]
    return known + sorted(set(modes) - set(known))


def benchmark_panel(
    ax: Axes, scores: Sequence[ModelScores], models: list[str], metric: str, name: str
) -> None:
    """One metric of :func:`benchmark_figure` on `ax`: model i at y = i, modes offset."""
    modes = present_modes([s.mode for s in scores])
    step = 0.8 / len(modes)
    best, labelled = -np.inf, set()
    for s in scores:
        values = list(getattr(s, metric))
        mean, std = spread(values)
        best = max(best, mean)
        y = models.index(s.model) + (modes.index(s.mode) - (len(modes) - 1) / 2) * step
        color = MODE_COLORS.get(s.mode, "tab:green")
        ax.errorbar(
            mean,
            y,
            xerr=std,
            fmt="o",
            color=color,
            mfc="white" if s.reference else color,
            capsize=3,
            label=None if s.mode in labelled else s.mode,
        )
        labelled.add(s.mode)
        ax.plot(values, [y] * len(values), ".", color="0.3", ms=3, alpha=0.6)
        ax.annotate(
            f"{mean:.1f}",
            (max(mean + std, *values), y),  # right of the bar and of every seed
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    if np.isfinite(best):
        ax.axvline(best, color="0.6", ls=":", lw=1)
    ax.margins(x=0.1)  # room for the labels of the means
    ax.set_xlabel(f"test {name} (%)")
    ax.grid(axis="x", alpha=0.3)


def benchmark_figure(scores: Sequence[ModelScores], title: str) -> Figure:
    """Test weighted F1 and macro F1 per model: mean (marker) ± sample std over seeds
    (bar), every seed a small dot; offline and causal side by side when both are given;
    plain references in grey italics on a grey band, hollow markers; a dotted line at the
    best mean."""
    if not scores:
        raise ValueError("no scores to draw")
    models = list(dict.fromkeys(s.model for s in scores))
    modes = present_modes([s.mode for s in scores])
    reference = [
        i for i, m in enumerate(models) if any(s.reference for s in scores if s.model == m)
    ]
    figure = new_figure(10.0, 1.6 + 0.36 * len(models) * len(modes))
    axes = figure.subplots(1, 2, sharey=True)
    for ax, metric, name in zip(
        axes, ("weighted_f1", "macro_f1"), ("weighted F1", "macro F1"), strict=True
    ):
        benchmark_panel(ax, scores, models, metric, name)
        for i in reference:
            ax.axhspan(i - 0.5, i + 0.5, color="0.93", zorder=0)
    axes[0].set_yticks(range(len(models)), models)
    axes[0].set_ylim(len(models) - 0.5, -0.5)
    axes[0].set_ylabel("model")
    for i in reference:
        tick = axes[0].get_yticklabels()[i]
        tick.set_color(REFERENCE_COLOR)
        tick.set_fontstyle("italic")
    if len(modes) > 1:
        axes[1].legend(title="mode", fontsize=8)
    note = "mean ± sample std over seeds; dots: seeds"
    if reference:
        note += "; grey band, italics, hollow: plain references"
    figure.suptitle(f"{title}\n{note}", fontsize=10)
    return figure


# --- offline vs causal ----------------------------------------------------------------


def modes_figure(
    buckets: Sequence[str],
    counts: Sequence[int],
    position_f1: Mapping[str, Sequence[Sequence[float]]],
    labels: Sequence[str],
    class_difference: Sequence[tuple[float, float]],
    title: str,
) -> Figure:
    """Offline vs causal. Left: weighted F1 by position in the dialogue per mode, mean
    line with a ± sample-std band over seeds and every seed a dot (`position_f1`: mode ->
    one row per seed, one value per bucket, in %, NaN for an empty bucket; the band is
    kept within 0-100). Right: the
    per-class F1 difference causal - offline (`class_difference`: mean and std over the
    paired seeds, in points)."""
    figure = new_figure(11.0, 2.0 + max(2.8, 0.35 * len(labels)))
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    x = np.arange(len(buckets))
    for mode in present_modes(list(position_f1)):
        seeds = np.asarray(position_f1[mode], dtype=np.float64).reshape(-1, len(buckets))
        stats = np.array([spread(seeds[:, b]) for b in range(len(buckets))])
        color = MODE_COLORS.get(mode, "tab:green")
        left.plot(x, stats[:, 0], "o-", color=color, label=f"{mode} ({len(seeds)} seeds)")
        low, high = (np.clip(stats[:, 0] + d * stats[:, 1], 0, 100) for d in (-1, 1))
        left.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
        for row in seeds:
            left.plot(x, row, ".", color=color, ms=3, alpha=0.6)
    left.set_xticks(x, [f"{b}\n(n={c})" for b, c in zip(buckets, counts, strict=True)])
    left.set_xlabel("position in the dialogue (utterances)")
    left.set_ylabel("weighted F1 (%)")
    left.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8)
    diff = np.asarray(class_difference, dtype=np.float64).reshape(len(labels), 2)
    y = np.arange(len(labels))
    colors = ["tab:red" if d < 0 else "tab:green" for d in diff[:, 0]]
    right.barh(y, diff[:, 0], xerr=np.nan_to_num(diff[:, 1]), color=colors, alpha=0.8, capsize=3)
    right.axvline(0, color="0.3", lw=1)
    right.set_yticks(y, list(labels))
    right.set_ylim(len(labels) - 0.5, -0.5)
    right.set_xlabel("F1 causal − offline (points)")
    right.set_ylabel("class")
    right.grid(axis="x", alpha=0.3)
    figure.suptitle(f"{title}\nband and error bars: ± sample std over seeds", fontsize=10)
    return figure


# --- streaming latency ----------------------------------------------------------------


def latency_figure(rows: Sequence[Mapping[str, float]], title: str) -> Figure:
    """Median and p99 milliseconds per utterance against the position in the dialogue:
    the streaming recognizer (one push) and, where measured, the batch model rerun on the
    whole history (rows of :func:`corect.inference.latency.bench`)."""
    figure = new_figure(7.5, 4.6)
    ax = figure.add_subplot()
    x = [r["position"] for r in rows]
    series = (
        ("streaming recognizer", "", "tab:blue", "o"),
        ("recompute the whole history", "recompute_", "tab:orange", "s"),
    )
    for name, prefix, color, marker in series:
        for stat, style in (("median", "-"), ("p99", "--")):
            key = f"{prefix}{stat}_ms"
            points = [(p, r[key]) for p, r in zip(x, rows, strict=True) if key in r]
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    style,
                    marker=marker,
                    color=color,
                    label=f"{name}, {stat}",
                )
    ax.set_xlabel("position in the dialogue (utterance index, 0-based)")
    ax.set_ylabel("latency per utterance (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(wrap(title, 90), fontsize=9)
    return figure
