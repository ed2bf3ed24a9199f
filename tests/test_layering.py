"""Imports point one way, package by package: the tiers below, and no two packages that import each other.

Every import counts: at the top of a file, inside a function (imported on use) and under `if TYPE_CHECKING:`
(a type that names a package above would be a loop the day someone imports it for real). A package is a
directory of textjepa/ or a module at its top (`api`, `agent`); textjepa/__init__.py is the package `textjepa`
itself. Read from the source with `ast` (nothing is imported), so a new upward import fails here, with its file
and line, before it turns into an import cycle.
"""

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "textjepa"
ROOT = "textjepa"  # textjepa/__init__.py: `from textjepa import WorldModel`, `__version__`

# Bottom to top. A package may import its own tier and the tiers below it; within a tier only one way
# (test_no_two_packages_import_each_other). A package this table does not place is an error (place it).
TIERS = (
    # what everything may use: errors, how a setting and its bounds are declared, atomic files, the environment's
    # one reader, devices and precision
    ("errors", "fields", "io", "settings", "precision", "runtime", "plot"),
    # the settings, the data contract and token stores, the torch modules and their losses, checkpoints
    ("config", "data", "models", "objectives", "checkpoint"),
    # text from a prompt and a conditioning: retrieval, transformers, llama.cpp, the prefix bridge's projector
    ("decoders",),
    # a trained checkpoint computing: encode under the data contract, condition, predict, the retrieval index
    ("inference",),
    # the inference core answering through a decoder
    ("agent",),
    # the commands' work: training, evaluation, the prefix bridge's training, the server, embed, the demo, export
    ("train", "eval", "bridge", "serve", "embed", "demo", "export"),
    # the public Python API, a facade over the inference core (nothing inside the package goes through it)
    ("api", ROOT),
    # the command line
    ("cli", "__main__"),
)
TIER = {package: rank for rank, packages in enumerate(TIERS) for package in packages}


def package_of(path: Path) -> str:
    """The package a file belongs to: its top directory under textjepa/, or its module name at the top."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ROOT if parts == ("__init__",) else parts[0]


def imported_package(module: str) -> str | None:
    """`textjepa.x.y` -> "x"; `textjepa` -> the root; anything else (not ours) -> None."""
    if module == ROOT:
        return ROOT
    if module.startswith(ROOT + "."):
        return module.split(".")[1]
    return None


def imports_of(tree: ast.AST) -> list[tuple[str, int]]:
    """(imported textjepa package, line) for every import in a file, at any depth, TYPE_CHECKING ones included.

    `from textjepa import api` names the package `api`; `from textjepa import WorldModel` the root."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == ROOT:
                for alias in node.names:
                    submodule = (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()
                    found.append((alias.name if submodule else ROOT, node.lineno))
            elif (package := imported_package(node.module)) is not None:
                found.append((package, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(p, node.lineno) for alias in node.names if (p := imported_package(alias.name)) is not None]
    return found


def package_imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, "file:line") for every import between two packages."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = package_of(path)
        for target, line in imports_of(ast.parse(path.read_text(encoding="utf-8"))):
            if target != source:
                edges.append((source, target, f"{path.relative_to(REPO_ROOT)}:{line}"))
    return edges


def tier_of(package: str) -> int:
    assert package in TIER, f"textjepa package {package!r} has no tier: add it to TIERS in {__file__}"
    return TIER[package]


def package_loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of packages that reach each other through imports (strongly connected, two or more)."""
    order: list[str] = []
    seen: set[str] = set()

    def finish_order(node: str, graph: dict[str, set[str]], out: list[str]) -> None:
        stack = [(node, iter(sorted(graph.get(node, ()))))]
        seen.add(node)
        while stack:
            current, children = stack[-1]
            child = next((c for c in children if c not in seen), None)
            if child is None:
                stack.pop()
                out.append(current)
            else:
                seen.add(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))

    nodes = sorted(set(edges) | {t for targets in edges.values() for t in targets})
    for node in nodes:
        if node not in seen:
            finish_order(node, edges, order)
    reverse: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            reverse.setdefault(target, set()).add(source)
    seen.clear()
    loops = []
    for node in reversed(order):
        if node not in seen:
            group: list[str] = []
            finish_order(node, reverse, group)
            if len(group) > 1:
                loops.append(sorted(group))
    return sorted(loops)


def test_every_package_has_a_tier():
    packages = {package_of(path) for path in PACKAGE.rglob("*.py")}
    assert not packages - set(TIER), f"packages without a tier (add them to TIERS): {sorted(packages - set(TIER))}"
    assert not set(TIER) - packages, f"TIERS names packages that do not exist: {sorted(set(TIER) - packages)}"


def test_imports_never_point_up_the_tiers():
    wrong = [
        f"{where} ({source}) imports textjepa.{target}"
        for source, target, where in package_imports()
        if tier_of(target) > tier_of(source)
    ]
    assert not wrong, "imports against the tiers:\n" + "\n".join(wrong)


def test_no_two_packages_import_each_other():
    edges: dict[str, set[str]] = {}
    first_seen: dict[tuple[str, str], str] = {}
    for source, target, where in package_imports():
        edges.setdefault(source, set()).add(target)
        first_seen.setdefault((source, target), where)
    loops = package_loops(edges)
    described = []
    for loop in loops:
        inside = sorted((s, t) for s in loop for t in edges.get(s, ()) if t in loop)
        described.append(" <-> ".join(loop) + "".join(f"\n  {s} -> {t} ({first_seen[s, t]})" for s, t in inside))
    assert not loops, "packages importing each other (every import counted):\n" + "\n".join(described)


def test_the_checker_sees_every_kind_of_import():
    tree = ast.parse(
        "from textjepa.train.loop import run_training\n"
        "if TYPE_CHECKING:\n    from textjepa.cli import main\n"
        "def f():\n    import textjepa.serve.app\n"
        "from textjepa import api, WorldModel\n"
        "import json\n"
    )
    assert sorted(imports_of(tree)) == [("api", 6), ("cli", 3), ("serve", 5), ("textjepa", 6), ("train", 1)]
    assert package_loops({"eval": {"train"}, "train": {"eval", "data"}, "data": set()}) == [["eval", "train"]]
    assert package_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert package_loops({"a": {"b"}, "b": set()}) == []
    assert tier_of("decoders") < tier_of("inference") < tier_of("agent") < tier_of("bridge") < tier_of("api")
