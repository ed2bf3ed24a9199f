"""The embedded default corpus: docstrings of the installed Python standard library.

Real technical English that is on every machine with Python, read with `ast` (nothing is imported,
so no module runs). Two files come out of it:
- paragraphs, one per line, for JEPA pretraining;
- `User: What does `name(signature)` do?<TAB>first paragraph of its docstring` pairs for the world model.
"""

from __future__ import annotations

import ast
import re
import sysconfig
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from textjepa.data.lines import escape
from textjepa.io import atomic_write_text

_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}
_MIN_PARAGRAPH = 40
_MAX_PARAGRAPH = 1200
_MIN_REPLY = 25
_MAX_SIGNATURE = 80
# Replies that many functions share ("Return self==value.") say nothing about the question.
_MAX_REPLY_REPEATS = 2


@dataclass(frozen=True)
class Documented:
    name: str  # module.Class.function
    signature: str
    docstring: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def iter_source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if _SKIP_PARTS.intersection(path.relative_to(root).parts):
            continue
        yield path


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def iter_documented(root: Path) -> Iterator[Documented]:
    """Every module, class and function with a docstring, in a stable order."""
    for path in iter_source_files(root):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        module = _module_name(root, path)
        if not module or module.split(".")[-1].startswith("_"):
            continue
        doc = ast.get_docstring(tree)
        if doc:
            yield Documented(module, "", doc)
        yield from _walk(tree.body, module)


def _walk(body: list[ast.stmt], prefix: str) -> Iterator[Documented]:
    for node in body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if node.name.startswith("_"):
            continue
        name = f"{prefix}.{node.name}"
        doc = ast.get_docstring(node)
        signature = ""
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = ast.unparse(node.args)
            args = re.sub(r"^self,?\s*", "", args)
            signature = f"({args})" if len(args) <= _MAX_SIGNATURE else f"({args[:_MAX_SIGNATURE]}...)"
        if doc:
            yield Documented(name, signature, doc)
        if isinstance(node, ast.ClassDef):
            yield from _walk(node.body, name)


def paragraphs(docstring: str) -> list[str]:
    """Blank-line separated blocks, each joined onto one line; doctest and tables are dropped."""
    out = []
    for block in re.split(r"\n\s*\n", docstring):
        text = " ".join(line.strip() for line in block.splitlines()).strip()
        if len(text) < _MIN_PARAGRAPH or text.startswith(">>>") or "---" in text or "===" in text:
            continue
        out.append(text[:_MAX_PARAGRAPH])
    return out


def first_paragraph(docstring: str) -> str:
    block = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    return " ".join(line.strip() for line in block.splitlines()).strip()


def question_for(item: Documented) -> str:
    return f"User: What does `{item.name}{item.signature}` do?"


@dataclass
class DemoCorpus:
    paragraphs_path: Path
    pairs_path: Path
    paragraphs: int
    pairs: int


def build_demo_corpus(out_dir: Path, root: Path | None = None) -> DemoCorpus:
    """Write the paragraph file and the question -> answer pair file (atomically)."""
    root = root or stdlib_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    seen_paragraphs: set[str] = set()
    paragraph_lines: list[str] = []
    pairs: list[tuple[str, str]] = []
    for item in iter_documented(root):
        for paragraph in paragraphs(item.docstring):
            if paragraph not in seen_paragraphs:
                seen_paragraphs.add(paragraph)
                paragraph_lines.append(escape(paragraph))
        reply = first_paragraph(item.docstring)
        if len(reply) >= _MIN_REPLY and not reply.startswith(item.name.split(".")[-1] + "("):
            pairs.append((question_for(item), reply[:_MAX_PARAGRAPH]))
    repeats = Counter(reply for _, reply in pairs)
    pair_lines = [f"{escape(q)}\t{escape(r)}" for q, r in pairs if repeats[r] <= _MAX_REPLY_REPEATS]
    paragraphs_path = out_dir / "stdlib_paragraphs.txt"
    pairs_path = out_dir / "stdlib_pairs.txt"
    atomic_write_text(paragraphs_path, "\n".join(paragraph_lines) + "\n")
    atomic_write_text(pairs_path, "\n".join(pair_lines) + "\n")
    return DemoCorpus(paragraphs_path, pairs_path, len(paragraph_lines), len(pair_lines))
