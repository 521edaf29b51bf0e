#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs all tests.
# This is the README's second command, and exactly what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first, pinned: the local CPU build; anything unpinned would pull a CUDA build.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
if [ -x scripts/setup-editors.sh ]; then
  bash scripts/setup-editors.sh
fi
python -m pytest -q "$@"
