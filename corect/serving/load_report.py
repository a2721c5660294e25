"""What a load test (:mod:`corect.serving.load`) reports: the latency percentiles, a
progress line per level, ``results.md`` (a Markdown table) and ``latency.png`` (latency
and throughput against the number of concurrent conversations), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from corect.common import plots
from corect.common.errors import InputError
from corect.common.files import write_atomic, write_json_atomic

MAX_EXAMPLES = 5  # error messages kept per level


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 / mean / max in ms (None without values)."""
    if not values:
        return {k: None for k in ("p50", "p95", "p99", "mean", "max")}
    x = np.asarray(values)
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {
        k: round(float(v), 3)
        for k, v in {"p50": p50, "p95": p95, "p99": p99, "mean": x.mean(), "max": x.max()}.items()
    }


def progress_line(level: dict[str, Any]) -> str:
    """One line per level."""
    lat, mem = level["latency_ms"], level["server"]
    ms = "" if lat["p50"] is None else f", p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms"
    return (
        f"{level['conversations']} conversations: {level['utterances']} utterances in "
        f"{level['seconds']:.1f} s, {level['utterances_per_s']:.1f}/s{ms}, "
        f"{level['errors']} errors, server {mem['cpu_percent']:.0f}% CPU, RSS "
        f"{mem['rss_mb_before']:.0f} -> {mem['rss_mb_peak']:.0f} MB (peak)"
    )


def replay_line(level: dict[str, Any], check: dict[str, Any]) -> str:
    """One line on a level's replay check (``corect.serving.load.compare_with_predict``)."""
    return (
        f"{level['conversations']} conversations, replay check: {check['compared']} "
        f"utterances compared ({check['dialogues']} dialogues) with `predict` (the batch "
        f"causal model), largest probability difference {check['max_abs_diff']:.1e}, "
        f"{check['beyond_tolerance']} beyond {check['tolerance']:g}, "
        f"{check['label_differences']} labels differ, {check['missing']} unanswered."
    )


# --------------------------------------------------------------------------- results


def format_results(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    pace = "as fast as possible" if not result["rate"] else f"{result['rate']:g}/s each"
    amount = (
        f"{result['duration']:g} s"
        if result["duration"] is not None
        else f"{result['utterances']} utterances"
    )
    lines = [
        f"# Load test of {result['run']}",
        "",
        f"Dataset {result['data']} ({result['split']}), {amount} per conversation, {pace}; "
        f"{result['cpus']} CPUs, {result['created']}.",
        "",
        "| Conversations | Utterances | Errors | Utterances/s | p50 ms | p95 ms | p99 ms "
        "| Server RSS MB (before / peak / after) | Server CPU % |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for level in result["levels"]:
        lat, mem = level["latency_ms"], level["server"]
        ms = " | ".join("-" if lat[k] is None else f"{lat[k]:.1f}" for k in ("p50", "p95", "p99"))
        lines.append(
            f"| {level['conversations']} | {level['utterances']} | {level['errors']} "
            f"| {level['utterances_per_s']:.1f} | {ms} | {mem['rss_mb_before']:.0f} / "
            f"{mem['rss_mb_peak']:.0f} / {mem['rss_mb_after']:.0f} | {mem['cpu_percent']:.0f} |"
        )
    for level, check in zip(result["levels"], result.get("replay", []), strict=False):
        lines += ["", replay_line(level, check)]
    examples = [e for level in result["levels"] for e in level["error_examples"]]
    if examples:
        lines += ["", "Errors (first ones):", "", *(f"- {e}" for e in examples[:MAX_EXAMPLES])]
    return "\n".join(lines) + "\n"


def latency_figure(result: dict[str, Any]):
    """Latency percentiles and throughput against the number of conversations."""
    figure = plots.new_figure(9.5, 4.0)
    left, right = figure.subplots(1, 2)
    levels = result["levels"]
    x = [level["conversations"] for level in levels]
    for key, style in (("p50", "-o"), ("p95", "--s"), ("p99", ":^")):
        y = [level["latency_ms"][key] for level in levels]
        left.plot(x, [np.nan if v is None else v for v in y], style, label=key)
    left.set_ylabel("latency per utterance (ms, send to reply)")
    right.plot(x, [level["utterances_per_s"] for level in levels], "-o", color="tab:green")
    right.set_ylabel("utterances per second")
    for ax in (left, right):
        ax.set_xlabel("concurrent conversations")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if len(x) > 1 and max(x) / min(x) >= 20:
            ax.set_xscale("log")
        ax.set_xticks(x, [str(n) for n in x])
    left.legend(fontsize=8)
    rate = result["rate"]
    pace = "as fast as possible" if not rate else f"{rate:g} utterance{'s' * (rate != 1)}/s"
    run = "/".join(Path(result["run"]).parts[-2:])
    title = f"{run} · each conversation sends {pace} · {result['cpus']} CPUs"
    figure.suptitle(plots.wrap(title, 110), fontsize=9)
    return figure


def write_results(out: str | Path, result: dict[str, Any]) -> Path:
    """``results.json``, ``results.md`` and ``latency.png`` into `out`, each atomically."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create the output folder: {err}") from None
    write_json_atomic(out / "results.json", result)
    write_atomic(out / "results.md", format_results(result))
    with plots.never_fatal(f"{out / 'latency.png'}"):
        plots.save_figure(latency_figure(result), out / "latency.png")
    return out
