#!/usr/bin/env python3
"""Seed entry point: `python scripts/prepare_expert_pairs.py --dataset sciq --output data/sciq_pairs.txt`.

Same as `textjepa prepare expert ...`: --dataset {sciq,squad,natural_questions,stackexchange},
--output, --split, --max-rows, --no-support, --min-answer-words (underscored spellings work too).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _entry import run  # noqa: E402 - needs the path above

if __name__ == "__main__":
    sys.exit(run(["prepare", "expert"]))
