#!/usr/bin/env bash
# Set up (runtime + training + test extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ros,train,test
. .venv/bin/activate
ruff check defect_perception test bench scripts launch
python -m pytest -q test "$@"
