"""The house rules of the layout: one direction between packages, commands side by side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from corect.models.attention import AttentionStack, init_stacked_cache, stacked_step
from corect.models.graph import build_graph, num_relations
from corect.models.rtgcn import RTGCN

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"train", "evaluate", "predict", "stream", "speed", "benchmark", "compare_modes"}
COMMANDS |= {"tune", "diagnose"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any level (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_corect_never_imports_data_prep() -> None:
    for path in sorted((ROOT / "corect").rglob("*.py")):
        bad = {n for n in imported_modules(path) if n.split(".")[0] == "data_prep"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_command_imports_another_command() -> None:
    for name in sorted(COMMANDS):
        path = ROOT / "corect" / f"{name}.py"
        others = {f"corect.{c}" for c in COMMANDS - {name}}
        bad = imported_modules(path) & others
        assert not bad, f"corect/{name}.py imports the command(s) {sorted(bad)}"


@pytest.mark.parametrize("window", [2, 0, -1])
def test_parallel_stacks_step_as_each_forward(window: int) -> None:
    """Three stacks stepped together (cross-modal, as in P-CM) give each stack's rows."""
    torch.manual_seed(0)
    stacks = [AttentionStack(8, 2, 2, 0.1, causal=True, window=window).eval() for _ in range(3)]
    x, context = torch.randn(3, 1, 7, 8), torch.randn(3, 1, 7, 8)
    mask = torch.ones(1, 7, dtype=torch.bool)
    with torch.no_grad():
        expected = torch.stack([s(x[p], mask, context[p])[0] for p, s in enumerate(stacks)])
        cache = init_stacked_cache(stacks, cross=True)
        rows = [stacked_step(cache, x[:, 0, i], context[:, 0, i]) for i in range(7)]
    torch.testing.assert_close(torch.stack(rows, dim=1), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="with a context"):
        stacked_step(cache, x[:, 0, 0])


def test_rtgcn_step_as_forward_under_a_window() -> None:
    torch.manual_seed(0)
    rtgcn = RTGCN(8, num_relations(2), 2, 0.1).eval()
    rtgcn.norm.running_mean.uniform_(-1, 1)  # a trained BatchNorm's statistics
    length, wp = 9, 3
    x = torch.randn(2 * length, 8)  # node m * length + n

    def graph(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return build_graph(torch.tensor([n]), 2, wp, 0, "temp_multi")

    with torch.no_grad():
        expected = rtgcn(x, *graph(length)).view(2, length, -1)
        cache = rtgcn.init_cache(wp + 1)
        rows = [rtgcn.step(x.view(2, length, -1)[:, i], cache, graph) for i in range(length)]
    torch.testing.assert_close(torch.stack(rows, dim=1), expected, atol=1e-5, rtol=0)
    assert len(cache["inputs"]) == len(cache["keys_values"]) == wp + 1
