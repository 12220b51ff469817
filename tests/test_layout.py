"""Each folder imports only what its docstring (and docs/design.md, Where things are) allows, and
everything is imported by its one installed name, ``streamscore``."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("streams", "models", "schemas", "training")  # top-level folders, installed as streamscore.<part>
PUBLIC = sorted(p for p in (ROOT / "streamscore").glob("*.py"))  # the library's own files, not the links
PUBLIC_MODULES = {"streamscore"} | {f"streamscore.{p.stem}" for p in PUBLIC if p.stem != "__init__"}

# folder → the project's packages its modules may import (besides their own folder), as
# streamscore.<name>
ALLOWED = {
    "schemas": (),
    "models": ("schemas",),
    "training": ("models", "schemas"),
    "streams/kafka": ("schemas", "streams.settings", "streams.kafka"),
    "streams/worker": ("models", "schemas", "streams.settings", "streams.kafka", "streams.worker"),
    "streams/ui": ("streams.settings", "streams.kafka", "streams.ui"),  # reads topics, never a model
}
PUBLIC_ALLOWED = ("models", "schemas", "streams.settings")
OLD_NAME_IN_TEXT = re.compile(r"""(>>> |\.\.\. |["'])(from|import) (streams|models|schemas|training)[. ]""")


def imports_of(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at the top or inside a function, under any name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ("streamscore", *PARTS)}


def product_files() -> list[Path]:
    """Every Python file of the product, through its real folders (not the links in streamscore/)."""
    return [*PUBLIC, *(path for part in PARTS for path in (ROOT / part).rglob("*.py"))]


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_folder_imports_only_what_it_may(folder):
    allowed = tuple(f"streamscore.{a}" for a in (folder.replace("/", "."), *ALLOWED[folder]))
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / folder).rglob("*.py")
        for name in imports_of(path)
        if not under(name, allowed)
    }
    assert not wrong, sorted(wrong)


def test_the_public_api_stands_on_the_scoring_core_models_and_schemas_only():
    allowed = tuple(PUBLIC_MODULES) + tuple(f"streamscore.{a}" for a in PUBLIC_ALLOWED)
    wrong = {f"{p.relative_to(ROOT)}: {n}" for p in PUBLIC for n in imports_of(p) if not under(n, allowed)}
    assert not wrong, sorted(wrong)


def test_everything_is_imported_by_its_one_installed_name():
    """``streams``, ``models``, ... by themselves are a user's names, not ours (issue 36)."""
    files = [*product_files(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    files += (ROOT / "docs" / "examples").glob("*.py")
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in imports_of(path)
        if name.split(".")[0] != "streamscore"
    }
    # Doctests and code run from a string (a child process's script) import too.
    wrong |= {
        f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
        for path in files
        for m in OLD_NAME_IN_TEXT.finditer(path.read_text())
    }
    assert not wrong, sorted(wrong)


def test_each_part_is_linked_into_the_one_package():
    for part in PARTS:
        link = ROOT / "streamscore" / part
        assert link.is_symlink() and link.resolve() == ROOT / part, f"streamscore/{part} -> ../{part}"


def test_nothing_but_the_cli_imports_the_commands():
    users = {
        str(path.relative_to(ROOT))
        for path in product_files()
        if "commands" not in path.parts
        and any(under(name, ("streamscore.streams.commands",)) for name in imports_of(path))
    }
    assert users <= {"streams/cli.py"}, users


def test_nothing_of_ours_imports_the_public_api():
    """``streamscore``'s own modules are for users; the product's code must not lean on them (no cycles)."""
    users = {
        str(path.relative_to(ROOT))
        for path in product_files()
        if path not in PUBLIC and any(name in PUBLIC_MODULES for name in imports_of(path))
    }
    assert not users, users


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports when it runs (not under ``if TYPE_CHECKING:``);
    ``from package import module`` imports that module, not the package's other modules."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= (subs & modules) or {node.module}
    return found & modules


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts if rel.parts[0] == "streamscore" else ("streamscore", *rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circles():
    """Nothing of ours imports, at the top or in a function, a module that imports it back."""
    modules = {module_name(p): p for p in product_files()}
    graph = {m: _runtime_imports(p, set(modules)) - {m} for m, p in modules.items()}
    circles = set()
    for start in graph:  # depth-first from each module: a path that comes back is a circle
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.add(" -> ".join([*path, start]))
                elif nxt not in path and len(path) < 8:
                    stack.append((nxt, [*path, nxt]))
    assert not circles, sorted(circles)
