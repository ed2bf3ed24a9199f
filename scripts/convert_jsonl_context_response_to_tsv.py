#!/usr/bin/env python3
"""Seed entry point: `python scripts/convert_jsonl_context_response_to_tsv.py --input_dir DIR --output FILE`.

Same as `textjepa prepare jsonl ...`: every *.jsonl / *.json shard under --input_dir (or
--input-dir), one JSON object per line with "context" and "response" keys -> context<TAB>response;
--min-tokens / --max-tokens bound the response in whitespace words.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _entry import run  # noqa: E402 - needs the path above

if __name__ == "__main__":
    sys.exit(run(["prepare", "jsonl"]))
