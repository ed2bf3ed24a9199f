"""Imports point one way: cli -> train/eval/serve/bridge -> agent -> decoders -> models/objectives/data -> config.

Read from the source with `ast` (nothing is imported), so a new upward import fails here, with its file
and line, before it turns into an import cycle.
"""

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "textjepa"

# Layer of each module, by the longest matching dotted prefix (inside textjepa). Higher layers may import
# lower ones and their own layer; a module this table does not place is an error (place it).
LAYERS = {
    "__init__": 0,
    "errors": 0,
    "config": 0,
    "models": 1,
    # train-world --target-model's frozen sentence-transformers space (loaded lazily; an optional extra).
    "models.frozen": 1,
    "objectives": 1,
    "data": 1,
    "checkpoint": 1,
    "runtime": 1,
    "plot": 1,
    "io": 1,
    "settings": 1,
    "precision": 1,
    "decoders": 2,
    # The bridge's projector and its scoring are what the LLM decoders read; its data, training and
    # evaluation sit beside train/ and eval/.
    "bridge.__init__": 2,
    "bridge.projector": 2,
    "bridge.scoring": 2,
    "agent": 3,
    # The Python API (WorldModel, Encoder): what the agent encodes, predicts and conditions through.
    "api": 3,
    "bridge": 4,
    "train": 4,
    "eval": 4,
    "serve": 4,
    "demo": 4,
    "embed": 4,
    "cli": 5,
    "__main__": 5,
}
# config.py gathers the command configs; it nests the settings dataclasses declared beside their code.
# The loss settings sit in objectives/configs.py, which imports no torch (nor do config.py's other parts).
CONFIG_PARTS = ("objectives.configs", "data.contract")
# Siblings in one layer that must not import each other in this direction.
FORBIDDEN = {("eval", "train"), ("train", "serve"), ("eval", "serve"), ("train", "bridge"), ("eval", "bridge")}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"textjepa.{module} has no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts)


def submodule_or_init(name: str) -> str:
    return name if (PACKAGE / f"{name}.py").exists() or (PACKAGE / name).is_dir() else "__init__"


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(imported textjepa module, line) for every import that runs (any depth; not `if TYPE_CHECKING:`)."""
    found = []

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "textjepa":  # a submodule, or a name of textjepa/__init__.py
                found.extend((submodule_or_init(alias.name), node.lineno) for alias in node.names)
            elif node.module.startswith("textjepa."):
                found.append((node.module.removeprefix("textjepa."), node.lineno))
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name.removeprefix("textjepa."), node.lineno)
                for alias in node.names
                if alias.name.startswith("textjepa.")
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    return {
        module_name(path): runtime_imports(ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def top(module: str) -> str:
    return module.split(".")[0]


def test_imports_never_point_up_the_layers():
    wrong = []
    for module, imports in import_graph().items():
        for imported, line in imports:
            if module == "config" and imported in CONFIG_PARTS:
                continue
            if module == "__init__" and imported == "api":  # `from textjepa import WorldModel`, imported on use
                continue
            if layer_of(imported) > layer_of(module):
                wrong.append(f"textjepa/{module.replace('.', '/')}.py:{line} imports textjepa.{imported}")
            elif (top(module), top(imported)) in FORBIDDEN and layer_of(imported) == layer_of(module):
                wrong.append(f"textjepa/{module.replace('.', '/')}.py:{line} imports textjepa.{imported} (sideways)")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def package_node(module: str) -> str:
    """The package a module belongs to; each of the bridge's decoder-side modules is a node of its own
    (the decoders read bridge.projector, bridge.scoring reads the decoders' LM wrapper)."""
    if top(module) == "bridge" and layer_of(module) == LAYERS["decoders"]:
        return module
    return top(module)


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, str] = {}

    def walk(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := walk(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return []

    for start in sorted(edges):
        if start not in state and (cycle := walk(start, [start])):
            return cycle
    return []


def test_no_package_imports_another_that_imports_it_back():
    """No cycle between the packages above models/objectives/data (eval <-> train was one)."""
    edges: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        for imported, _ in imports:
            if min(layer_of(module), layer_of(imported)) >= LAYERS["decoders"]:
                source, target = package_node(module), package_node(imported)
                if source != target:
                    edges.setdefault(source, set()).add(target)
    cycle = find_cycle(edges)
    assert not cycle, "packages importing each other: " + " -> ".join(cycle)
    assert find_cycle({"eval": {"train"}, "train": {"eval"}}) == ["eval", "train", "eval"]


def test_the_checker_sees_an_upward_import():
    tree = ast.parse(
        "from textjepa.train.loop import run_training\n"
        "if TYPE_CHECKING:\n    from textjepa.cli import main\n"
        "def f():\n    import textjepa.serve.app\n"
    )
    assert runtime_imports(tree) == [("train.loop", 1), ("serve.app", 5)]
    assert layer_of("train.loop") > layer_of("models.heads")
    assert layer_of("bridge.projector") < layer_of("agent") < layer_of("bridge.train")
