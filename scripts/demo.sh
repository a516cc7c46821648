#!/usr/bin/env bash
# Set up the runtime and run the line on the bundled sample recording.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ros
. .venv/bin/activate
exec defect-perception line --demo "$@"
