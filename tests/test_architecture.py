"""The dependency direction of DESIGN.md: bot uses providers and ledger; they use neither bot nor each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("providers", {"bot", "ledger"}), ("ledger", {"bot", "providers"})],
)
def test_lower_layers_do_not_import_the_layers_above_or_beside(
    package: str, forbidden: set[str]
) -> None:
    offenders = {
        path: sorted(names & forbidden)
        for path, names in imported_packages(package).items()
        if names & forbidden
    }
    assert offenders == {}


def test_the_console_adapter_reaches_the_ledger_only_through_the_flow() -> None:
    """Adapters translate; every credit rule is behind ImagineService and Credits."""
    tree = ast.parse((REPO / "bot" / "console.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if name.startswith("sqlalchemy")}
    assert "ledger.Ledger" not in imported
    assert not {name for name in imported if name.startswith("ledger.ledger")}
