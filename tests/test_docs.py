"""The documentation points at things that exist: file paths, modules and their names,
and the relative links between the pages."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SOURCES = sorted([*(ROOT / "corect").rglob("*.py"), *(ROOT / "data_prep").rglob("*.py")])
PATH = re.compile(r"(?<![\w/.-])((?:corect|data_prep|configs|docs|tests)/[\w/.*<>{}-]*\w)")
DOTTED = re.compile(r"(?<![\w./-])((?:corect|data_prep)(?:\.\w+)+)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def resolves(dotted: str) -> bool:
    """Whether `dotted` names a module, or a name (at any depth) inside one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def references(text: str) -> tuple[set[str], set[str]]:
    paths = {m.rstrip(".") for m in PATH.findall(text)}
    dotted = {m.rstrip(".") for m in DOTTED.findall(text)}
    dotted = {d for d in dotted if d.rsplit(".", 1)[-1] not in ("py", "md", "yaml", "json")}
    placeholder = re.compile(r"[<*{]|/[A-Z]+(\.|$)")  # runs/<x>/, configs/X.yaml, RUN
    return {p for p in paths if not placeholder.search(p)}, dotted


@pytest.mark.parametrize("page", PAGES + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_references_exist(page: Path) -> None:
    paths, dotted = references(page.read_text())
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    missing += [d for d in sorted(dotted) if not resolves(d)]
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_exist(page: Path) -> None:
    links = [link for link in LINK.findall(page.read_text()) if "://" not in link]
    missing = [link for link in links if not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
