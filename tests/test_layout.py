"""Each folder imports only what its docstring (and docs/design.md, Where things are) allows."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("streamscore", "streams", "models", "schemas", "training")

# folder → the project's packages its modules may import (besides their own folder)
ALLOWED = {
    "schemas": (),
    "models": ("schemas",),
    "training": ("models", "schemas"),
    "streams/kafka": ("schemas", "streams.settings", "streams.kafka"),
    "streams/worker": ("models", "schemas", "streams.settings", "streams.kafka", "streams.worker"),
    "streams/ui": ("streams.settings", "streams.kafka", "streams.ui"),  # reads topics, never a model
    "streamscore": ("models", "schemas", "streams.worker.batch"),
}


def imports_of(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in OURS}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_folder_imports_only_what_it_may(folder):
    own = folder.replace("/", ".")
    allowed = (own, *ALLOWED[folder])
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / folder).rglob("*.py")
        for name in imports_of(path)
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    }
    assert not wrong, sorted(wrong)


def test_nothing_but_the_cli_imports_the_commands():
    users = {
        str(path.relative_to(ROOT))
        for package in OURS
        for path in (ROOT / package).rglob("*.py")
        if "commands" not in path.parts
        and any(name.startswith("streams.commands") for name in imports_of(path))
    }
    assert users <= {"streams/cli.py"}, users


def test_nothing_of_ours_imports_the_public_api():
    """``streamscore`` is for users; the product's own code must not lean on it (no cycles)."""
    users = {
        str(path.relative_to(ROOT))
        for package in OURS
        if package != "streamscore"
        for path in (ROOT / package).rglob("*.py")
        if any(name.split(".")[0] == "streamscore" for name in imports_of(path))
    }
    assert not users, users
