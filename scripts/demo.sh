#!/usr/bin/env bash
# Set up mesflow in .venv on a fresh machine and start the live demo plant.
#   bash scripts/demo.sh                 # real time
#   bash scripts/demo.sh --speed 30      # 30 simulated seconds per second
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
exec .venv/bin/mesflow demo "$@"
