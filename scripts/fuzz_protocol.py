#!/usr/bin/env python
"""Longer protocol fuzz runs against the stdio server (the suite's tests/test_protocol_fuzz.py runs one short one).

    python scripts/fuzz_protocol.py --seeds 1-20 --count 20000 [--model DIR]

Each seed starts a fresh ``python -m codellama_lsp --stdio``, sends ``--count`` fuzzed
messages (tests/protocol_fuzz.py says which) and checks that the process stays up, that
every request in a well-delimited frame gets exactly one response with its id, and that
every byte written is strictly framed, standard JSON. Prints one line per seed; exits 1
if any seed found a problem (its log is kept under --logs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from codellama_lsp import BUNDLED_MODEL  # noqa: E402
from protocol_fuzz import run_fuzz  # noqa: E402


def seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=seeds, default=seeds("1-5"), help="e.g. 1-20 or 3,7,9 (default 1-5)")
    p.add_argument("--count", type=int, default=20000, help="messages per seed (default 20000)")
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    p.add_argument("--logs", type=Path, default=Path("fuzz-logs"), help="server logs go here")
    args = p.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    failed = 0
    for seed in args.seeds:
        report = run_fuzz(args.model, args.logs, seed, args.count)
        print(report.summary(), flush=True)
        for problem in report.problems[:10]:
            print("   ", problem)
        failed += bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
