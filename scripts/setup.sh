#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh ros,train,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-ros}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null
python -m pip install --quiet -e ".[${extras}]"
