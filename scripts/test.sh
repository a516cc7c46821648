#!/usr/bin/env bash
# Set up (runtime + training + test extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ros,train,test
# colcon for the packaging test, in its own small venv outside the checkout (optional:
# without it that one test is skipped with the reason).
colcon_venv="${XDG_CACHE_HOME:-$HOME/.cache}/defect_perception/colcon-venv"
if [ ! -x "$colcon_venv/bin/colcon" ]; then
  (python3 -m venv "$colcon_venv" && "$colcon_venv/bin/pip" install --quiet colcon-common-extensions) \
    || echo "note: colcon could not be installed; the colcon build test will be skipped"
fi
if [ -x "$colcon_venv/bin/colcon" ]; then
  export COLCON="$colcon_venv/bin/colcon"
fi
# system packages some tests use (headless Chromium for the report render test); optional
bash scripts/install_test_system_deps.sh || echo "note: system test deps not installed; those tests skip"
. .venv/bin/activate
ruff check defect_perception test bench scripts launch
python -m pytest -q test "$@"
