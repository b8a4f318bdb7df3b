"""The layering of docs/architecture.md: dependencies point one way, and click lives in the CLI only."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.math  # seconds, no training: it runs with the fastest tier


def test_the_layers_and_acyclic_contracts_hold():
    """The contracts of pyproject.toml's [tool.importlinter]: one-way layers from errors up to cli, with serve
    under everything, and no import cycle inside a layer either."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def test_click_is_imported_by_the_cli_layer_only():
    importers = sorted(str(path.relative_to(ROOT)) for package in ("diffagent", "serve")
                       for path in (ROOT / package).rglob("*.py")
                       if any(module.split(".")[0] == "click" for module in imported_modules(path)))
    assert importers == ["diffagent/cli.py"]


# A file the code cites by its path from the repository root (under docs, serve, benchmarks, ...), then an
# optional section, `, section N` or `, "Title"`, which must be one of its headings.
REFERENCE = re.compile(r"\b((?:docs|diffagent|serve|benchmarks|tests|zoo)/[\w./-]*\w\.(?:md|py|toml))"
                       r"(?:, section (\d+)|, \\?\"([^\"\\]+)\\?\")?")


def test_every_file_and_section_a_docstring_cites_exists():
    broken = []
    for package in ("diffagent", "serve", "benchmarks", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            for match in REFERENCE.finditer(path.read_text()):
                cited, number, title = match.groups()
                target = ROOT / cited
                if not target.is_file():
                    broken.append(f"{path.relative_to(ROOT)}: {cited}")
                    continue
                headings = [line.lstrip("#").strip() for line in target.read_text().splitlines()
                            if line.startswith("#")]
                if number and not any(h.startswith(f"{number}.") for h in headings):
                    broken.append(f"{path.relative_to(ROOT)}: {cited}, section {number}")
                if title and not any(title.lower() in h.lower() for h in headings):
                    broken.append(f"{path.relative_to(ROOT)}: {cited}, {title!r}")
    assert not broken, broken
