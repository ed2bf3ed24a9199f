"""Small but faithful copies of the hub datasets textjepa reads: real parquet files, real layouts.

Each builder returns {path_in_repo: parquet bytes} laid out as on the Hub, with the column names and
types of the real dataset. Types come from `datasets.Features(...).arrow_schema`, i.e. the encoding
the `datasets` library itself writes (a sequence of dicts is stored as a struct of lists).
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Features, Sequence, Value

WIKI = "wikimedia/wikipedia"
ULTRACHAT = "HuggingFaceH4/ultrachat_200k"
SCIQ = "allenai/sciq"
SQUAD = "rajpurkar/squad_v2"
NQ = "google-research-datasets/natural_questions"
STACKEXCHANGE = "HuggingFaceH4/stack-exchange-preferences"


def parquet_bytes(rows: list[dict], features: Features, row_group_size: int = 64) -> bytes:
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


# ---------------------------------------------------------------- wikimedia/wikipedia

WIKI_FEATURES = Features(
    {"id": Value("string"), "url": Value("string"), "title": Value("string"), "text": Value("string")}
)


def wiki_article(file_index: int, article: int) -> dict:
    title = f"Topic {file_index}-{article}"
    text = (
        f"{title} is a subject studied in file {file_index}. It has a long history\n"
        f"that spans several centuries and many places.\n\n"
        f"History\n\n"
        f"The earliest record of {title.lower()} dates from antiquity, when scholars\twrote about it.\n\n"
        f"See also\n\n"
        f"Modern work on {title.lower()} continues in universities around the world today."
    )
    return {
        "id": f"{file_index * 1000 + article}",
        "url": f"https://en.wikipedia.org/wiki/Topic_{file_index}_{article}",
        "title": title,
        "text": text,
    }


def wikipedia_files(num_files: int = 3, articles_per_file: int = 20) -> dict[str, bytes]:
    files = {}
    for f in range(num_files):
        rows = [wiki_article(f, a) for a in range(articles_per_file)]
        files[f"20231101.en/train-{f:05d}-of-{num_files:05d}.parquet"] = parquet_bytes(rows, WIKI_FEATURES, 8)
    # Another language beside it: never read.
    german = [{"id": "1", "url": "u", "title": "Thema", "text": "Dies ist ein deutscher Absatz über ein Thema."}]
    files["20231101.de/train-00000-of-00001.parquet"] = parquet_bytes(german, WIKI_FEATURES)
    return files


# ---------------------------------------------------------------- HuggingFaceH4/ultrachat_200k

ULTRACHAT_FEATURES = Features(
    {
        "prompt": Value("string"),
        "prompt_id": Value("string"),
        "messages": [{"content": Value("string"), "role": Value("string")}],
    }
)


def ultrachat_row(i: int, turns: int = 3) -> dict:
    messages = []
    for t in range(turns):
        messages.append({"content": f"Question {t} of chat {i}: how do\tplants grow?", "role": "user"})
        messages.append({"content": f"Answer {t} of chat {i}: with light,\nwater and soil.", "role": "assistant"})
    return {"prompt": messages[0]["content"], "prompt_id": f"{i:064x}", "messages": messages}


def ultrachat_files(rows: int = 10) -> dict[str, bytes]:
    train = [ultrachat_row(i) for i in range(rows)]
    train.append({"prompt": "empty", "prompt_id": "e" * 64, "messages": []})  # a conversation with no turns
    return {
        "data/train_sft-00000-of-00001-a3ecf92756993583.parquet": parquet_bytes(train, ULTRACHAT_FEATURES),
        "data/test_sft-00000-of-00001-f7dfac4afe5b93f4.parquet": parquet_bytes(
            [ultrachat_row(100 + i) for i in range(3)], ULTRACHAT_FEATURES
        ),
        "data/train_gen-00000-of-00001-3d4cd8309148a71f.parquet": parquet_bytes(
            [ultrachat_row(200 + i, 1) for i in range(3)], ULTRACHAT_FEATURES
        ),
    }


# ---------------------------------------------------------------- allenai/sciq

SCIQ_FEATURES = Features(
    {
        "question": Value("string"),
        "distractor3": Value("string"),
        "distractor1": Value("string"),
        "distractor2": Value("string"),
        "correct_answer": Value("string"),
        "support": Value("string"),
    }
)


def sciq_files() -> dict[str, bytes]:
    def row(i: int, support: str) -> dict:
        return {
            "question": f"What gas do plants absorb in experiment {i}?",
            "distractor3": "oxygen",
            "distractor1": "helium",
            "distractor2": "nitrogen",
            "correct_answer": "carbon dioxide",
            "support": support,
        }

    train = [row(i, f"Plants take in carbon dioxide.\nExperiment {i} shows it.") for i in range(8)]
    train.append(row(8, ""))  # SciQ has rows without support
    return {
        "data/train-00000-of-00001.parquet": parquet_bytes(train, SCIQ_FEATURES),
        "data/validation-00000-of-00001.parquet": parquet_bytes([row(100, "Validation support.")], SCIQ_FEATURES),
        "data/test-00000-of-00001.parquet": parquet_bytes([row(200, "Test support.")], SCIQ_FEATURES),
    }


# ---------------------------------------------------------------- rajpurkar/squad_v2

SQUAD_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")}),
    }
)


def squad_files() -> dict[str, bytes]:
    context = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."
    rows = []
    for i in range(6):
        rows.append(
            {
                "id": f"q{i}",
                "title": "Normans",
                "context": context,
                "question": f"In what country is Normandy located? ({i})",
                "answers": {"text": ["France", "France"], "answer_start": [159, 159]},
            }
        )
    rows.append(
        {
            "id": "unanswerable",
            "title": "Normans",
            "context": context,
            "question": "Who gave their name to Normandy in the 1000s and 1100s?",
            "answers": {"text": [], "answer_start": []},
        }
    )
    return {
        "squad_v2/train-00000-of-00001.parquet": parquet_bytes(rows, SQUAD_FEATURES),
        "squad_v2/validation-00000-of-00001.parquet": parquet_bytes(rows[:2], SQUAD_FEATURES),
    }


# ---------------------------------------------------------------- google-research-datasets/natural_questions

NQ_FEATURES = Features(
    {
        "id": Value("string"),
        "document": {
            "html": Value("string"),
            "title": Value("string"),
            "tokens": Sequence(
                {
                    "end_byte": Value("int64"),
                    "is_html": Value("bool"),
                    "start_byte": Value("int64"),
                    "token": Value("string"),
                }
            ),
            "url": Value("string"),
        },
        "question": {"text": Value("string"), "tokens": Sequence(Value("string"))},
        "long_answer_candidates": Sequence(
            {
                "end_byte": Value("int64"),
                "end_token": Value("int64"),
                "start_byte": Value("int64"),
                "start_token": Value("int64"),
                "top_level": Value("bool"),
            }
        ),
        "annotations": Sequence(
            {
                "id": Value("string"),
                "long_answer": {
                    "candidate_index": Value("int64"),
                    "end_byte": Value("int64"),
                    "end_token": Value("int64"),
                    "start_byte": Value("int64"),
                    "start_token": Value("int64"),
                },
                "short_answers": Sequence(
                    {
                        "end_byte": Value("int64"),
                        "end_token": Value("int64"),
                        "start_byte": Value("int64"),
                        "start_token": Value("int64"),
                        "text": Value("string"),
                    }
                ),
                "yes_no_answer": ClassLabel(names=["NO", "YES"]),  # -1 when there is none
            }
        ),
    }
)

NQ_TOKENS = ["<P>", "The", "Eiffel", "Tower", "is", "in", "Paris", ",", "France", ".", "</P>"]


def nq_row(i: int, short: bool, long: bool) -> dict:
    html = [t in ("<P>", "</P>") for t in NQ_TOKENS]
    starts = [sum(len(t) + 1 for t in NQ_TOKENS[:k]) for k in range(len(NQ_TOKENS))]
    span = {
        "candidate_index": 0,
        "start_token": 0,
        "end_token": len(NQ_TOKENS),
        "start_byte": 0,
        "end_byte": 60,
    }
    no_span = {"candidate_index": -1, "start_token": -1, "end_token": -1, "start_byte": -1, "end_byte": -1}
    shorts = {"end_byte": [], "end_token": [], "start_byte": [], "start_token": [], "text": []}
    if short:
        shorts = {
            "end_byte": [40],
            "end_token": [7],
            "start_byte": [34],
            "start_token": [6],
            "text": ["Paris"],
        }
    return {
        "id": str(1000 + i),
        "document": {
            "html": "<html><body><P>The Eiffel Tower is in Paris, France.</P></body></html>",
            "title": "Eiffel Tower",
            "tokens": {
                "end_byte": [s + len(t) for s, t in zip(starts, NQ_TOKENS, strict=True)],
                "is_html": html,
                "start_byte": starts,
                "token": NQ_TOKENS,
            },
            "url": "https://en.wikipedia.org//w/index.php?title=Eiffel_Tower",
        },
        "question": {
            "text": f"where is the eiffel tower {i}",
            "tokens": ["where", "is", "the", "eiffel", "tower"],
        },
        "long_answer_candidates": {
            "end_byte": [60],
            "end_token": [len(NQ_TOKENS)],
            "start_byte": [0],
            "start_token": [0],
            "top_level": [True],
        },
        "annotations": {
            "id": [str(9000 + i)],
            "long_answer": [span if long else no_span],
            "short_answers": [shorts],
            "yes_no_answer": [-1],
        },
    }


def natural_questions_files() -> dict[str, bytes]:
    first = [nq_row(i, short=True, long=True) for i in range(3)] + [nq_row(3, short=False, long=True)]
    second = [nq_row(4, short=False, long=False), nq_row(5, short=True, long=True)]
    return {
        "default/train-00000-of-00002.parquet": parquet_bytes(first, NQ_FEATURES),
        "default/train-00001-of-00002.parquet": parquet_bytes(second, NQ_FEATURES),
        "default/validation-00000-of-00001.parquet": parquet_bytes([nq_row(10, True, True)], NQ_FEATURES),
        "dev/validation-00000-of-00001.parquet": parquet_bytes([nq_row(20, True, True)], NQ_FEATURES),
    }


# ---------------------------------------------------------------- HuggingFaceH4/stack-exchange-preferences

STACKEXCHANGE_FEATURES = Features(
    {
        "qid": Value("int64"),
        "question": Value("string"),
        "answers": [
            {
                "answer_id": Value("int64"),
                "author": Value("string"),
                "author_id": Value("int64"),
                "author_profile": Value("string"),
                "pm_score": Value("int64"),
                "selected": Value("bool"),
                "text": Value("string"),
            }
        ],
        "date": Value("string"),
        "metadata": Sequence(Value("string")),
    }
)


def se_answer(answer_id: int, score: int, selected: bool, text: str) -> dict:
    return {
        "answer_id": answer_id,
        "author": "someone",
        "author_id": 7,
        "author_profile": "https://example.stackexchange.com/users/7",
        "pm_score": score,
        "selected": selected,
        "text": text,
    }


def stackexchange_files() -> dict[str, bytes]:
    def question(qid: int, answers: list[dict]) -> dict:
        return {
            "qid": qid,
            "question": f"<p>How do I reverse a list in Python? (#{qid})</p>\n<pre><code>xs = [1, 2]</code></pre>",
            "answers": answers,
            "date": "2012/01/01",
            "metadata": [
                "https://stackoverflow.com/questions/1",
                "https://stackoverflow.com",
                "https://stackoverflow.com/users/1",
            ],
        }

    best = "<p>Use <code>reversed(xs)</code> or slicing:</p><pre><code>xs[::-1]\n</code></pre>"
    site_a = [
        question(1, [se_answer(11, 1, False, "<p>Loop backwards.</p>"), se_answer(12, 4, True, best)]),
        question(
            2,
            [
                se_answer(21, 3, False, "<p>Call <code>xs.reverse()</code> &amp; done.</p>"),
                se_answer(22, 2, True, "<p>Accepted but lower.</p>"),
            ],
        ),
        question(3, []),  # no answers
    ]
    site_b = [question(4, [se_answer(41, 2, False, "<ul><li>one</li><li>two</li></ul>")])]
    return {
        "data/academia.stackexchange.com/train-00000-of-00001.parquet": parquet_bytes(site_a, STACKEXCHANGE_FEATURES),
        "data/stackoverflow.com/train-00000-of-00001.parquet": parquet_bytes(site_b, STACKEXCHANGE_FEATURES),
    }


# ---------------------------------------------------------------- generic datasets


def generic_text_files() -> dict[str, bytes]:
    features = Features({"text": Value("string"), "label": Value("int64")})
    rows = [{"text": f"Generic line {i}\nwith a second line\tand a tab.", "label": i % 2} for i in range(12)]
    rows.append({"text": "   ", "label": 0})
    return {"data/train-00000-of-00001.parquet": parquet_bytes(rows, features)}


def generic_chat_files() -> dict[str, bytes]:
    features = Features({"conversations": [{"from": Value("string"), "value": Value("string")}], "id": Value("string")})
    rows = [
        {
            "id": str(i),
            "conversations": [
                {"from": "human", "value": f"Hello number {i}, what is two plus two?"},
                {"from": "gpt", "value": f"Two plus two is four ({i})."},
            ],
        }
        for i in range(5)
    ]
    return {"data/train-00000-of-00001.parquet": parquet_bytes(rows, features)}


def no_text_files() -> dict[str, bytes]:
    features = Features({"id": Value("int64"), "label": Value("int64")})
    return {"data/train-00000-of-00001.parquet": parquet_bytes([{"id": i, "label": i} for i in range(4)], features)}


def all_repos() -> dict[str, dict[str, bytes]]:
    return {
        WIKI: wikipedia_files(),
        ULTRACHAT: ultrachat_files(),
        SCIQ: sciq_files(),
        SQUAD: squad_files(),
        NQ: natural_questions_files(),
        STACKEXCHANGE: stackexchange_files(),
        "textjepa-tests/plain-text": generic_text_files(),
        "textjepa-tests/sharegpt-chat": generic_chat_files(),
        "textjepa-tests/no-text": no_text_files(),
    }
