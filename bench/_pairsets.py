"""The offline pair sets of the quality benchmark, each split by a key so that no text crosses the split.

Three sets of different kinds, built deterministically from what is on the machine or in a package:

- `stdlib`: the demo's pairs, `User: What does `name(signature)` do?` -> the first paragraph of its docstring,
  from the installed Python standard library; the key is the top-level module, so a whole module (and all its
  functions' docstrings) is on one side.
- `jargon`: head word -> definition from the Jargon File (Debian's `dict-jargon`, dictd format), a field other
  than Python: `User: What is <word>?` -> the first paragraph of the entry; the key is the head word.
- `chat`: multi-turn dialogues of the `chatterbot-corpus` package: the context holds up to `context_turns`
  earlier turns (`User:` / `Assistant:` lines joined by a newline), the next turn is the reply; the key is the
  conversation.

On top of the key split, a test pair whose context or reply text occurs anywhere in the training split is
dropped, and so is a test pair repeating an earlier test context or reply (two identical candidates could not
be told apart). `check_disjoint` verifies the result. A set is written as two line files in the world format
(`context<TAB>next_turn`, `\\n` escapes) plus a manifest; a file is trusted only when its manifest says it is
complete and of this builder's version.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from textjepa.data.lines import escape  # noqa: E402
from textjepa.data.local_corpus import first_paragraph, iter_documented, paragraphs, question_for, stdlib_root  # noqa: E402
from textjepa.data.tokens import atomic_write_text  # noqa: E402
from textjepa.errors import TextJepaError  # noqa: E402

BUILDER_VERSION = 4
SET_NAMES = ("stdlib", "jargon", "chat")
# Share of keys held out per set: the smaller sets hold out more so that the test split has two or more
# batches of 256 candidates (chat loses many test pairs to repeated opening questions).
TEST_FRACTION = {"stdlib": 0.2, "jargon": 0.3, "chat": 0.55}
MIN_REPLY_CHARS = 25
MAX_REPLY_CHARS = 1200
# As in the demo corpus: a docstring that many functions share ("Return self==value.") says nothing.
MAX_REPLY_REPEATS = 2
CHAT_CONTEXT_TURNS = 4
JARGON_PACKAGE = "dict-jargon"
JARGON_FILES = ("jargon.index", "jargon.dict.dz")
SYSTEM_DICTD = Path("/usr/share/dictd")


@dataclass(frozen=True)
class Pair:
    key: str  # what the split is decided by
    context: str  # plain text (real newlines)
    reply: str


@dataclass
class SetFiles:
    name: str
    train: Path
    test: Path
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------- splitting


def is_test_key(key: str, fraction: float, salt: str) -> bool:
    """A stable pseudo-random choice per key (not Python's salted hash)."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_by_key(pairs: Iterable[Pair], fraction: float, salt: str) -> tuple[list[Pair], list[Pair]]:
    """Train and test pairs, in their original order; see the module docstring for the text rules."""
    train, candidates = [], []
    for pair in pairs:
        (candidates if is_test_key(pair.key, fraction, salt) else train).append(pair)
    train_texts = {p.context for p in train} | {p.reply for p in train}
    test, seen = [], set()
    for pair in candidates:
        if pair.context in train_texts or pair.reply in train_texts:
            continue
        if pair.context in seen or pair.reply in seen:
            continue
        seen.update((pair.context, pair.reply))
        test.append(pair)
    check_disjoint(train, test)
    return train, test


def check_disjoint(train: list[Pair], test: list[Pair]) -> None:
    """No key and no text of the test split occurs in the training split; test texts are unique."""
    train_keys = {p.key for p in train}
    train_texts = {p.context for p in train} | {p.reply for p in train}
    shared_keys = train_keys.intersection(p.key for p in test)
    if shared_keys:
        raise TextJepaError(f"split keys on both sides: {sorted(shared_keys)[:3]}")
    shared = [t for p in test for t in (p.context, p.reply) if t in train_texts]
    if shared:
        raise TextJepaError(f"{len(shared)} test texts also occur in the training split, e.g. {shared[0][:60]!r}")
    replies = Counter(p.reply for p in test)
    contexts = Counter(p.context for p in test)
    repeated = [t for t, n in (replies + contexts).items() if n > 1]
    if repeated:
        raise TextJepaError(f"{len(repeated)} texts repeat within the test split, e.g. {repeated[0][:60]!r}")


# ---------------------------------------------------------------- stdlib


def stdlib_pairs(root: Path | None = None) -> tuple[list[Pair], dict[str, list[str]]]:
    """The demo's question -> first docstring paragraph pairs keyed by top-level module, and every
    docstring paragraph by top-level module (the JEPA corpus is cut from those of the training modules)."""
    pairs: list[Pair] = []
    module_paragraphs: dict[str, list[str]] = {}
    for item in iter_documented(root or stdlib_root()):
        module = item.name.split(".")[0]
        module_paragraphs.setdefault(module, []).extend(paragraphs(item.docstring))
        reply = first_paragraph(item.docstring)
        if len(reply) >= MIN_REPLY_CHARS and not reply.startswith(item.name.split(".")[-1] + "("):
            pairs.append(Pair(module, question_for(item), reply[:MAX_REPLY_CHARS]))
    repeats = Counter(p.reply for p in pairs)
    return [p for p in pairs if repeats[p.reply] <= MAX_REPLY_REPEATS], module_paragraphs


# ---------------------------------------------------------------- dictd (jargon)


def _base64_number(text: str) -> int:
    """dictd's index numbers: big-endian base64 digits of arbitrary length."""
    value = 0
    for char in text:
        value = value * 64 + _B64_DIGITS.index(char)
    return value


_B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
assert base64.b64encode(bytes([0, 16, 131])).decode() == "ABCD"  # the same alphabet as standard base64


def read_dictd(index_path: Path, dict_path: Path) -> Iterator[tuple[str, str]]:
    """(head word, entry text) in index order; `.dict.dz` is dictzip, which gzip reads whole."""
    opener = gzip.open if dict_path.suffix == ".dz" else open
    with opener(dict_path, "rb") as handle:
        data = handle.read()
    for line in index_path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        offset, length = _base64_number(parts[1]), _base64_number(parts[2])
        yield parts[0], data[offset : offset + length].decode("utf-8", errors="replace")


_REDIRECT = re.compile(r"^(see|same as|syn\.?|var\.?|obs\.?|abbrev\.?)\b", re.IGNORECASE)
_LEADING_TAGS = re.compile(r"^(\[[^\]]*\]\s*)+")
_SENSE_NUMBER = re.compile(r"^\d+\.\s+")


def jargon_definition(entry: str) -> str | None:
    """The first paragraph of a Jargon File entry's body: head word, pronunciation and leading
    [etymology/usage] tags removed, {cross-references} as plain words; None for a pointer to another entry."""
    lines = entry.split("\n")[1:]  # the head word
    if lines and lines[0].startswith(" ") and not lines[0].startswith("    "):
        lines = lines[1:]  # " /pron/, n." or " //"
    blocks = re.split(r"\n\s*\n", "\n".join(lines).strip())
    for block in blocks:
        text = " ".join(part.strip() for part in block.splitlines()).strip()
        text = _SENSE_NUMBER.sub("", _LEADING_TAGS.sub("", text))
        text = re.sub(r"\{([^}]*)\}", r"\1", text).strip()
        if not text:
            continue
        if len(text) < MIN_REPLY_CHARS or (_REDIRECT.match(text) and len(text) < 80):
            return None
        return text[:MAX_REPLY_CHARS]
    return None


def jargon_pairs(entries: Iterable[tuple[str, str]]) -> list[Pair]:
    pairs = []
    for word, entry in entries:
        definition = jargon_definition(entry)
        if definition:
            pairs.append(Pair(word.lower(), f"User: What is {word}?", definition))
    return pairs


def find_jargon_files(cache_dir: Path, fetch: bool = True) -> tuple[Path, Path]:
    """The Jargon File's dictd files: installed, or unpacked in the cache, or fetched now with apt-get."""
    for folder in (SYSTEM_DICTD, cache_dir / "dict-jargon" / "usr" / "share" / "dictd"):
        index, data = (folder / name for name in JARGON_FILES)
        if index.is_file() and data.is_file():
            return index, data
    if not fetch:
        raise TextJepaError(f"the Jargon File is not installed; `apt-get download {JARGON_PACKAGE}` fetches it")
    print(f"fetching the Jargon File: apt-get download {JARGON_PACKAGE} into {cache_dir}", file=sys.stderr)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        try:
            subprocess.run(["apt-get", "download", JARGON_PACKAGE], cwd=tmp, check=True, capture_output=True)
            [deb] = Path(tmp).glob("*.deb")
            unpacked = Path(tmp) / "dict-jargon"
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise TextJepaError(
                f"cannot fetch {JARGON_PACKAGE} with apt-get ({detail.decode(errors='replace').strip() or exc}); "
                f"install it (apt-get install {JARGON_PACKAGE}) and run again"
            ) from exc
        target = cache_dir / "dict-jargon"
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)  # complete or absent: the files are found only after this rename
    return find_jargon_files(cache_dir, fetch=False)


# ---------------------------------------------------------------- chat


def chatterbot_conversations() -> Iterator[tuple[str, list[str]]]:
    """(conversation id, turns) of the English chatterbot-corpus files, in file-name order."""
    try:
        import chatterbot_corpus
        import yaml
    except ImportError as exc:
        raise TextJepaError("the chat set needs chatterbot-corpus: pip install -e '.[bench]'") from exc
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise TextJepaError(f"no English conversations in {folder}")
    for path in files:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for number, conversation in enumerate(document.get("conversations") or []):
            if not isinstance(conversation, list):
                continue  # a malformed entry (a bare string would be read as one turn per character)
            turns = [" ".join(str(turn).split()) for turn in conversation if turn is not None]
            yield f"{path.stem}/{number}", [t for t in turns if t]


def chat_pairs(conversations: Iterable[tuple[str, list[str]]], context_turns: int = CHAT_CONTEXT_TURNS) -> list[Pair]:
    """Every turn after the first is the next turn of the (up to `context_turns`) turns before it; speakers
    alternate, the first being the user."""
    pairs = []
    for _, turns in conversations:
        for i in range(1, len(turns)):
            start = max(0, i - context_turns)
            context = "\n".join(f"{'User' if j % 2 == 0 else 'Assistant'}: {turns[j]}" for j in range(start, i))
            # Many conversations open with the same question and answer it differently: keyed by the
            # opening turn, they all land on one side of the split.
            pairs.append(Pair(turns[0].lower(), context, turns[i]))
    return pairs


# ---------------------------------------------------------------- files


def write_pairs(path: Path, pairs: list[Pair]) -> None:
    atomic_write_text(path, "".join(f"{escape(p.context)}\t{escape(p.reply)}\n" for p in pairs))


def _describe(pairs: list[Pair]) -> dict:
    return {
        "pairs": len(pairs),
        "keys": len({p.key for p in pairs}),
        "mean_context_chars": round(sum(len(p.context) for p in pairs) / max(1, len(pairs)), 1),
        "mean_reply_chars": round(sum(len(p.reply) for p in pairs) / max(1, len(pairs)), 1),
        "mean_context_turns": round(sum(p.context.count("\n") + 1 for p in pairs) / max(1, len(pairs)), 2),
    }


def _load_manifest(folder: Path) -> dict | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("version") != BUILDER_VERSION:
        return None
    if not all((folder / name).is_file() for name in manifest.get("files", [])):
        return None
    return manifest


def build_set(name: str, cache_dir: Path, fetch: bool = True) -> SetFiles:
    """Train/test files of one pair set under `cache_dir/sets/<name>/`, built once (manifest written last)."""
    if name not in SET_NAMES:
        raise TextJepaError(f"unknown pair set {name!r}; choose from {', '.join(SET_NAMES)}")
    folder = cache_dir / "sets" / name
    manifest = _load_manifest(folder)
    if manifest is None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)
        extra: dict = {}
        if name == "stdlib":
            pairs, module_paragraphs = stdlib_pairs()
            source = f"Python {sys.version.split()[0]} standard library docstrings ({stdlib_root()})"
        elif name == "jargon":
            index, data = find_jargon_files(cache_dir, fetch)
            pairs = jargon_pairs(read_dictd(index, data))
            source = f"Jargon File ({JARGON_PACKAGE}: {index.parent})"
        else:
            pairs = chat_pairs(chatterbot_conversations())
            source = f"chatterbot-corpus English conversations, context of up to {CHAT_CONTEXT_TURNS} turns"
        train, test = split_by_key(pairs, TEST_FRACTION[name], salt=name)
        write_pairs(folder / "train.txt", train)
        write_pairs(folder / "test.txt", test)
        files = ["train.txt", "test.txt"]
        if name == "stdlib":
            # JEPA pretraining text for every set: docstring paragraphs of the training modules only, so
            # nothing of a held-out module is seen before the test.
            test_modules = {p.key for p in pairs} - {p.key for p in train}
            lines = _unique(
                escape(paragraph)
                for module, texts in sorted(module_paragraphs.items())
                if module not in test_modules
                for paragraph in texts
            )
            atomic_write_text(folder / "jepa_paragraphs.txt", "\n".join(lines) + "\n")
            files.append("jepa_paragraphs.txt")
            extra["jepa_paragraphs"] = len(lines)
        manifest = {
            "version": BUILDER_VERSION,
            "name": name,
            "source": source,
            "test_fraction": TEST_FRACTION[name],
            "dropped_test_pairs": sum(is_test_key(p.key, TEST_FRACTION[name], name) for p in pairs) - len(test),
            "train": _describe(train),
            "test": _describe(test),
            "files": files,
            **extra,
        }
        atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return SetFiles(name, folder / "train.txt", folder / "test.txt", manifest)


def _unique(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(context, reply) of a file written by write_pairs, newlines restored."""
    from textjepa.data.lines import unescape

    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        context, reply = line.split("\t")
        out.append((unescape(context), unescape(reply)))
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the quality benchmark's pair sets and print their manifests.")
    parser.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=SET_NAMES)
    parser.add_argument("--cache-dir", default=str(REPO_ROOT / "bench" / ".cache" / "quality"))
    args = parser.parse_args()
    try:
        for set_name in args.sets:
            print(json.dumps(build_set(set_name, Path(args.cache_dir)).manifest, indent=2))
    except TextJepaError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
