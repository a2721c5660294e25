"""The house rules of the layout: one direction between packages, commands side by side."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch

from corect.models.attention import AttentionStack, init_stacked_cache, stacked_step
from corect.models.graph import build_graph, num_relations
from corect.models.rtgcn import RTGCN

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"train", "evaluate", "predict", "stream", "speed", "benchmark", "compare_modes"}
COMMANDS |= {"tune", "diagnose", "serve"}


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


# The convention every command follows (issue 21): these statements, as written here.
PRELUDE = ("args = build_parser().parse_args(argv)", "keep_freed_memory()")
ENDING = 'if __name__ == "__main__":\n    sys.exit(main())'


def same_code(node: ast.AST, source: str) -> bool:
    """Whether `node` (a statement or an expression) is the code of `source` (quotes and
    spacing aside)."""
    if isinstance(node, ast.expr):
        return ast.dump(node) == ast.dump(ast.parse(source, mode="eval").body)
    return ast.dump(node) == ast.dump(ast.parse(source).body[0])


def convention_breaks(tree: ast.Module) -> list[str]:
    """How a command module departs from the one command convention (empty: it follows)."""
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    breaks = [] if "build_parser" in functions else ["no module-level build_parser()"]
    if not tree.body or not same_code(tree.body[-1], ENDING):
        breaks.append(f"the file does not end with {ENDING!r}")
    main = functions.get("main")
    if main is None:
        return [*breaks, "no module-level main()"]
    args = main.args
    params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if [p.arg for p in params] != ["argv"] or args.vararg or args.kwarg:
        breaks.append(f"main takes {[p.arg for p in params]}, not exactly one parameter argv")
    else:
        annotation = params[0].annotation
        if annotation is None or ast.unparse(annotation) != "Sequence[str] | None":
            breaks.append("main's argv is not annotated Sequence[str] | None")
        defaults = [*args.defaults, *args.kw_defaults]
        if len(defaults) != 1 or not same_code(defaults[0], "None"):
            breaks.append("main's argv does not default to None")
    if main.returns is None or ast.unparse(main.returns) != "int":
        breaks.append("main is not annotated to return int")
    first = [ast.unparse(statement) for statement in main.body[:2]]
    if len(first) < 2 or not all(map(same_code, main.body[:2], PRELUDE)):
        breaks.append(f"main begins {first}, not {list(PRELUDE)}")
    return breaks


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_follow_one_convention(name: str) -> None:
    path = ROOT / "corect" / f"{name}.py"
    breaks = convention_breaks(ast.parse(path.read_text()))
    assert not breaks, f"corect/{name}.py: " + "; ".join(breaks)


def test_the_convention_check_names_each_break() -> None:
    source = "def main(argv: list[str] | None = None) -> int:\n    return 0\nmain()\n"
    breaks = convention_breaks(ast.parse(source))
    assert len(breaks) == 4 and "build_parser" in breaks[0] and "sys.exit" in breaks[1]
    assert "Sequence[str] | None" in breaks[2] and "main begins ['return 0']" in breaks[3]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_status:
        importlib.import_module(f"corect.{name}").main(["--help"])
    assert exit_status.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m corect.{name}")


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
        rows = [stacked_step(x[:, 0, i], cache, context=context[:, 0, i]) for i in range(7)]
    torch.testing.assert_close(torch.stack(rows, dim=1), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="with a context"):
        stacked_step(x[:, 0, 0], cache)


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
        rows = [rtgcn.step(x.view(2, length, -1)[:, i], cache, graph=graph) for i in range(length)]
    torch.testing.assert_close(torch.stack(rows, dim=1), expected, atol=1e-5, rtol=0)
    assert len(cache.inputs) == len(cache.keys_values) == wp + 1
