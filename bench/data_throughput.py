"""Data pipeline throughput and memory, measured against the raw libraries in the same run.

1. parquet -> cached lines: textjepa's Wikipedia conversion (hub.iter_local_batches +
   hub.write_wikipedia_lines through an AtomicLineFile: the code `hub:wikimedia/wikipedia` runs after
   the download) against a raw pyarrow scan of the same files (iter_batches of the text column,
   materialised as Python strings: the least any Python consumer must do). Goal: ratio >= 0.5.
2. corpus -> token ids: textjepa.data.tokens.build_or_open_token_store over the line file (reading,
   checks, encoding, the memory-mapped store) against raw `tokenizers` encode_batch_fast (the fastest
   way to ids, what the store uses since issue 12; encode_batch also tracks offsets) over the same
   texts already in memory. Goal: ratio >= 0.8.
3. Peak RSS (VmHWM, each step in a fresh subprocess) for a corpus and for the same corpus 10x
   larger, for both steps. Goal: 10x corpus / corpus <= 1.2.

Ratios are throughput(textjepa) / throughput(raw), best of --repeats runs (step 1's in turns with its
references); step 1 also gives the ratio of CPU seconds (steadier than the wall clock when other work shares
the cores; it leaves out the fsync wait).
The corpus is synthetic Wikipedia-like parquet (articles of paragraphs and headings, the real column names), made here.

    python bench/data_throughput.py      # prints the ratios, writes bench/results/data_throughput.json
    python bench/data_throughput.py --base-mb 8 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

GOALS = {"parquet_to_lines_ratio": 0.5, "lines_to_token_ids_ratio": 0.8, "peak_rss_10x_ratio": 1.2}
ARTICLE_ROWS_PER_GROUP = 1000
WORDS = (
    "the of and in to a was is for on as by with he at from his that it an were which are this also be had "
    "first one their its new after but who not they have her she two been other when there all during into "
    "school time may years more most only over city some world would where later up such used many can state "
    "about national out known university united then made team film american century river government war"
).split()


# ---------------------------------------------------------------- corpus


@functools.cache
def corpus_sentences() -> tuple[str, ...]:
    """The corpus language: 100k sentences over a Zipf vocabulary, the same for every corpus. The cumulative
    weights are summed once (random.choices would sum all 20k weights again for every sentence, which took
    most of a --quick run); the draws are the same."""
    language = random.Random(0)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = WORDS + ["".join(language.choices(letters, k=language.randint(2, 11))) for _ in range(20_000)]
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))
    sentences = []
    for _ in range(100_000):
        words = language.choices(vocab, cum_weights=cumulative, k=language.randint(6, 28))
        sentences.append(" ".join(words).capitalize() + language.choice([".", ".", ".", ",", ";"]))
    return tuple(sentences)


def make_corpus(folder: Path, megabytes: float, files: int, seed: int = 0) -> list[Path]:
    """Wikipedia-like parquet: `id, url, title, text`, articles of paragraphs separated by blank lines.

    Text is built from 100k distinct sentences over a Zipf-distributed vocabulary of 20k made-up
    words, so it compresses and decodes about like real prose (a small pool of repeated paragraphs
    would make the raw scan unrealistically fast). The words and sentences are the same for every
    seed (the language of the corpus); `seed` draws the articles. A corpus and its 10x version must
    share the language: with a vocabulary of their own, the 10x corpus took 53% more tokens per line
    under the tokenizer trained on the first (172 vs 112), and the peak RSS of tokenising it compared
    denser chunks, not a larger corpus.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    sentences = corpus_sentences()
    rng = random.Random(seed)
    headings = ["History", "See also", "References", "Early life", "Career", "Geography", "External links"]
    folder.mkdir(parents=True, exist_ok=True)
    per_file = int(megabytes * 1e6 / files)
    paths, article = [], 0
    for f in range(files):
        rows, size = [], 0
        while size < per_file:
            paragraphs = []
            for _ in range(rng.randint(3, 18)):
                if rng.random() < 0.15:
                    paragraphs.append(rng.choice(headings))
                else:
                    joiner = "\n" if rng.random() < 0.2 else " "  # sometimes a line break inside a paragraph
                    paragraphs.append(joiner.join(rng.choices(sentences, k=rng.randint(1, 7))))
            text = "\n\n".join(paragraphs)
            rows.append(
                {
                    "id": str(article),
                    "url": f"https://en.wikipedia.org/wiki/A{article}",
                    "title": f"A{article}",
                    "text": text,
                }
            )
            size += len(text)
            article += 1
        path = folder / f"train-{f:05d}-of-{files:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=ARTICLE_ROWS_PER_GROUP)
        paths.append(path)
    return paths


def text_bytes(paths: list[Path]) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(int(pc.sum(pc.binary_length(pq.read_table(p, columns=["text"]).column(0))).as_py()) for p in paths)


# ---------------------------------------------------------------- the measured steps


def ours_parquet_to_lines(paths: list[Path], out: Path) -> int:
    from textjepa.data.hub import iter_local_batches, write_wikipedia_lines
    from textjepa.data.lines import LineStats
    from textjepa.data.writer import AtomicLineFile

    stats = LineStats()
    with AtomicLineFile(out) as writer:
        write_wikipedia_lines(iter_local_batches(paths, ["text"]), writer, stats)
        writer.commit()
    return stats.used


def raw_parquet_scan(paths: list[Path], to_python: bool = True) -> int:
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["text"]):
            column = batch.column(0)
            total += len(column.to_pylist()) if to_python else len(column)
    return total


def ours_lines_to_ids(lines: Path, tokenizer, cache: Path) -> int:
    from textjepa.data.lines import LineStats, iter_latent_texts
    from textjepa.data.tokens import build_or_open_token_store, file_hash

    stats = LineStats()
    records = ((text,) for text in iter_latent_texts(lines, 1_000_000, stats))
    store = build_or_open_token_store(
        records, ("text",), tokenizer, file_hash(lines), cache, "latent", 1, stats, 1_000_000
    )
    return store.total_tokens


def raw_encode(texts: list[str], tokenizer) -> int:
    total = 0
    for start in range(0, len(texts), 2048):
        chunk = texts[start : start + 2048]
        total += sum(len(e.ids) for e in tokenizer.encode_batch_fast(chunk, add_special_tokens=False))
    return total


def best_time(fn, repeats: int) -> float:
    return best_times(fn, repeats)[0]


def best_times(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds (this process) of `repeats` runs. On a shared machine the CPU time
    is the steadier measure; the wall clock also counts waiting (for the CPU, and for the disk in fsync)."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return min(walls), min(cpus)


def interleaved_best_times(fns: list, repeats: int) -> list[tuple[float, float]]:
    """best_times of each function, run in turns (one run of each per round), so that a change of load during
    the measurement falls on all of them alike."""
    walls, cpus = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            walls[i].append(time.perf_counter() - start)
            cpus[i].append(time.process_time() - cpu_start)
    return [(min(w), min(c)) for w, c in zip(walls, cpus)]


# ---------------------------------------------------------------- memory (child processes)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(argv: list[str]) -> None:
    """`--child lines FOLDER OUT`, `tokens LINES TOKENIZER CACHE`, `raw-tokens LINES TOKENIZER`: peak RSS."""
    from textjepa.data.tokens import tokenizer_from_string

    kind = argv[0]
    if kind == "lines":
        ours_parquet_to_lines(sorted(Path(argv[1]).glob("*.parquet")), Path(argv[2]))
    elif kind == "raw-tokens":  # the library alone, streaming the same lines: what it needs by itself
        from textjepa.data.lines import LineStats, iter_latent_texts

        tokenizer, chunk = tokenizer_from_string(Path(argv[2]).read_text()), []
        for text in iter_latent_texts(Path(argv[1]), 1_000_000, LineStats()):
            chunk.append(text)
            if len(chunk) == 2048:
                tokenizer.encode_batch_fast(chunk, add_special_tokens=False)
                chunk = []
    else:
        tokenizer = tokenizer_from_string(Path(argv[2]).read_text())
        ours_lines_to_ids(Path(argv[1]), tokenizer, Path(argv[3]))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def run_child(*args: str) -> float:
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


# ---------------------------------------------------------------- main


def lines_rows(p2l: dict, corpus: dict) -> list[dict]:
    from _common import goal_row  # here, not at the top: it imports torch, which the RSS children must not load

    return [
        goal_row(
            "parquet -> lines / raw pyarrow scan",
            p2l["ratio"],
            GOALS["parquet_to_lines_ratio"],
            note=f"{p2l['ours_s']} vs {p2l['raw_pyarrow_scan_s']} s on {corpus['base_text_mb']} MB",
        ),
        goal_row(
            "parquet -> lines / raw pyarrow scan, CPU time",
            p2l["cpu_ratio"],
            GOALS["parquet_to_lines_ratio"],
            note=f"{p2l['ours_cpu_s']} vs {p2l['raw_pyarrow_scan_cpu_s']} CPU s, load {p2l['load_average_1min']}",
        ),
    ]


def print_lines(p2l: dict) -> None:
    print(
        f"parquet -> lines : ratio {p2l['ratio']:.2f} (goal >= 0.5)  ours {p2l['ours_s']}s, raw pyarrow scan "
        f"{p2l['raw_pyarrow_scan_s']}s; vs arrow-only scan {p2l['ratio_vs_arrow_only']:.2f}; CPU time ratio "
        f"{p2l['cpu_ratio']:.2f} ({p2l['ours_cpu_s']} vs {p2l['raw_pyarrow_scan_cpu_s']} CPU s)"
    )


def report_lines_only(corpus: dict, p2l: dict, json_path: str | None) -> int:
    result = {"corpus": corpus, "parquet_to_lines": p2l, "goals": GOALS, "table": lines_rows(p2l, corpus)}
    print(f"corpus: {corpus}")
    print_lines(p2l)
    if json_path:
        out = Path(json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base-mb", type=float, default=10.0, help="article text in the base corpus (default %(default)s)"
    )
    parser.add_argument("--files", type=int, default=4, help="parquet files in the base corpus (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default %(default)s)")
    parser.add_argument("--vocab", type=int, default=8000, help="BPE vocabulary (default %(default)s)")
    parser.add_argument(
        "--json", dest="json_path", default=str(REPO_ROOT / "bench" / "results" / "data_throughput.json")
    )
    parser.add_argument(
        "--lines-only", action="store_true", help="step 1 only (parquet -> lines): no 10x corpus, tokens or RSS"
    )
    parser.add_argument("--quick", action="store_true", help="the smallest run (seconds): 0.5 MB, 2 files, 1 repeat")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.base_mb, args.files, args.repeats, args.vocab = 0.5, 2, 1, 1000
    if args.child:
        child(args.child)
        return 0

    from textjepa.data.lines import LineStats, iter_latent_texts
    from textjepa.data.tokens import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="textjepa-bench-") as tmp_name:
        tmp = Path(tmp_name)
        base = make_corpus(tmp / "base", args.base_mb, args.files, seed=1)
        if not args.lines_only:
            make_corpus(tmp / "big", args.base_mb * 10, args.files * 10, seed=2)
        base_bytes = text_bytes(base)

        # 1. parquet -> lines
        lines = tmp / "lines.txt"
        (raw_scan, raw_scan_cpu), (raw_arrow_only, _), (ours_lines, ours_lines_cpu) = interleaved_best_times(
            [
                lambda: raw_parquet_scan(base),
                lambda: raw_parquet_scan(base, to_python=False),
                lambda: ours_parquet_to_lines(base, lines),
            ],
            args.repeats,
        )
        p2l = {
            "ours_s": round(ours_lines, 3),
            "raw_pyarrow_scan_s": round(raw_scan, 3),
            "raw_arrow_only_scan_s": round(raw_arrow_only, 3),
            "ours_mb_per_s": round(base_bytes / 1e6 / ours_lines, 1),
            "ratio": round(raw_scan / ours_lines, 3),
            "ratio_vs_arrow_only": round(raw_arrow_only / ours_lines, 3),
            "ours_cpu_s": round(ours_lines_cpu, 3),
            "raw_pyarrow_scan_cpu_s": round(raw_scan_cpu, 3),
            "cpu_ratio": round(raw_scan_cpu / ours_lines_cpu, 3),
            "load_average_1min": round(os.getloadavg()[0], 1),
        }
        if args.lines_only:
            corpus = {"base_text_mb": round(base_bytes / 1e6, 1), "base_files": args.files}
            return report_lines_only(corpus, p2l, args.json_path)

        # 2. lines -> token ids (tokenizer trained outside the timing, as a cached one would be)
        texts = list(iter_latent_texts(lines, 1_000_000, LineStats()))
        tokenizer = train_tokenizer(texts[:50_000], args.vocab)
        (tmp / "tokenizer.json").write_text(tokenizer.to_str())
        raw_tokens = best_time(lambda: raw_encode(texts, tokenizer), args.repeats)
        counter = iter(range(10**6))
        ours_tokens = best_time(
            lambda: ours_lines_to_ids(lines, tokenizer, tmp / f"cache{next(counter)}"), args.repeats
        )
        token_count = raw_encode(texts[:2000], tokenizer)  # sanity: both paths see the same texts
        assert token_count > 0

        # 3. peak RSS, fresh processes, corpus vs 10x corpus
        big_lines = tmp / "big_lines.txt"
        rss = {
            "lines_base_mb": run_child("lines", str(tmp / "base"), str(tmp / "rss_lines.txt")),
            "lines_10x_mb": run_child("lines", str(tmp / "big"), str(big_lines)),
            "tokens_base_mb": run_child("tokens", str(lines), str(tmp / "tokenizer.json"), str(tmp / "rss_cache_base")),
            "tokens_10x_mb": run_child(
                "tokens", str(big_lines), str(tmp / "tokenizer.json"), str(tmp / "rss_cache_big")
            ),
            "raw_tokens_base_mb": run_child("raw-tokens", str(lines), str(tmp / "tokenizer.json")),
            "raw_tokens_10x_mb": run_child("raw-tokens", str(big_lines), str(tmp / "tokenizer.json")),
        }
        lines_bytes = lines.stat().st_size

    result = {
        "corpus": {
            "base_text_mb": round(base_bytes / 1e6, 1),
            "base_files": args.files,
            "ten_x_files": args.files * 10,
            "lines_mb": round(lines_bytes / 1e6, 1),
            "lines": len(texts),
        },
        "parquet_to_lines": p2l,
        "lines_to_token_ids": {
            "ours_s": round(ours_tokens, 3),
            "raw_encode_batch_s": round(raw_tokens, 3),
            "ours_mb_per_s": round(lines_bytes / 1e6 / ours_tokens, 1),
            "ratio": round(raw_tokens / ours_tokens, 3),
        },
        "peak_rss": {
            **{k: round(v, 1) for k, v in rss.items()},
            "lines_ratio": round(rss["lines_10x_mb"] / rss["lines_base_mb"], 3),
            "tokens_ratio": round(rss["tokens_10x_mb"] / rss["tokens_base_mb"], 3),
            "raw_tokens_ratio": round(rss["raw_tokens_10x_mb"] / rss["raw_tokens_base_mb"], 3),
        },
        "goals": GOALS,
    }
    l2t, mem = result["lines_to_token_ids"], result["peak_rss"]
    from _common import goal_row  # here, not at the top: it imports torch, which the RSS children must not load

    result["table"] = [  # the bench/run_all.py rows
        *lines_rows(p2l, result["corpus"]),
        goal_row(
            "lines -> token ids / raw encode_batch",
            l2t["ratio"],
            GOALS["lines_to_token_ids_ratio"],
            note=f"{l2t['ours_s']} vs {l2t['raw_encode_batch_s']} s",
        ),
    ]
    for step in ("lines", "tokens"):
        note = f"{mem[f'{step}_base_mb']} -> {mem[f'{step}_10x_mb']} MB"
        if step == "tokens":
            note += f"; raw tokenizers alone {mem['raw_tokens_ratio']}"
        result["table"].append(
            goal_row(f"peak RSS {step}, 10x corpus / 1x", mem[f"{step}_ratio"], GOALS["peak_rss_10x_ratio"], "<=", note)
        )
    print(f"corpus: {result['corpus']}")
    print_lines(p2l)
    print(
        f"lines -> ids     : ratio {l2t['ratio']:.2f} (goal >= 0.8)  ours {l2t['ours_s']}s, raw encode_batch "
        f"{l2t['raw_encode_batch_s']}s"
    )
    print(
        f"peak RSS 10x/1x  : lines {mem['lines_ratio']:.2f} "
        f"({mem['lines_base_mb']} -> {mem['lines_10x_mb']} MB), tokens {mem['tokens_ratio']:.2f} "
        f"({mem['tokens_base_mb']} -> {mem['tokens_10x_mb']} MB) (goal <= 1.2); raw tokenizers alone "
        f"{mem['raw_tokens_ratio']:.2f} ({mem['raw_tokens_base_mb']} -> {mem['raw_tokens_10x_mb']} MB)"
    )
    if args.json_path:
        out = Path(args.json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
