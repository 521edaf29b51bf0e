"""A seeded protocol fuzz run against the real stdio server (tests/protocol_fuzz.py says what it sends).

A few thousand messages; the longer runs are ``scripts/fuzz_protocol.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from codellama_lsp import BUNDLED_MODEL
from protocol_fuzz import run_fuzz

SEED = int(os.environ.get("FUZZ_SEED", "16"))
COUNT = int(os.environ.get("FUZZ_COUNT", "5000"))


def test_protocol_fuzz(tmp_path: Path) -> None:
    report = run_fuzz(BUNDLED_MODEL, tmp_path, SEED, COUNT)
    print(report.summary())
    assert report.problems == [], report.problems[:20]
    assert report.messages == COUNT and report.expected > COUNT // 3
    # Bounded, not "unchanged": the documents, caches and log buffers it creates may take a few MiB.
    assert report.rss_end_kib - report.rss_start_kib < 150 * 1024, report.summary()
