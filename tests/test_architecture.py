"""The dependency direction of DESIGN.md: bot uses providers and ledger; they use neither bot nor each other.

Imports are read with ``ast``, so an import only made for type checking, or
inside a function, counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def imported_packages(source: str) -> set[str]:
    """The top-level package of every absolute import in ``source``, wherever it appears."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def imports_by_module(package: str) -> dict[str, set[str]]:
    """``imported_packages`` of every ``.py`` file under ``package``, by path."""
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no Python files found under {package}/"
    return {
        str(path.relative_to(REPO)): imported_packages(path.read_text(encoding="utf-8"))
        for path in files
    }


def modules_importing(package: str, forbidden: str) -> list[str]:
    return [path for path, names in imports_by_module(package).items() if forbidden in names]


def test_providers_never_import_bot() -> None:
    assert modules_importing("providers", "bot") == []


def test_ledger_never_imports_bot() -> None:
    assert modules_importing("ledger", "bot") == []


def test_providers_never_import_ledger() -> None:
    assert modules_importing("providers", "ledger") == []


def test_ledger_never_imports_providers() -> None:
    assert modules_importing("ledger", "providers") == []


def test_the_import_reader_sees_every_kind_of_absolute_import() -> None:
    """Guards the rules above against passing because the reader missed an import."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import ledger.schema as schema\n"
        "from providers.base import ImageProvider\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    import bot\n"
        "def later():\n"
        "    from bot import messages\n"
    )
    assert imported_packages(source) == {"typing", "ledger", "providers", "bot"}


@pytest.mark.parametrize(
    "adapter", sorted(path.name for path in (REPO / "bot" / "platforms").glob("*.py"))
)
def test_each_platform_adapter_reaches_the_ledger_only_through_the_flow(adapter: str) -> None:
    """Adapters translate; every credit rule is behind ImagineService and Credits."""
    tree = ast.parse((REPO / "bot" / "platforms" / adapter).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if name.startswith("sqlalchemy")}
    assert "ledger.Ledger" not in imported
    assert not {name for name in imported if name.startswith("ledger.ledger")}


def test_the_platform_adapters_live_together_apart_from_the_core() -> None:
    adapters = {path.stem for path in (REPO / "bot" / "platforms").glob("*.py")}
    assert adapters == {"__init__", "console", "discord", "slack"}
