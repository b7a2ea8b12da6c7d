#!/usr/bin/env bash
# Regenerate the pinned, hashed dependency locks from pyproject.toml. Run it after any change
# to the dependencies there, and commit requirements/ with that change:
#   bash scripts/lock.sh              # keep current pins where pyproject.toml still allows them
#   bash scripts/lock.sh --upgrade    # move every pin to the newest allowed release
#
# requirements/lock.txt     runtime + demo + test: what scripts/test.sh (and so CI) installs
# requirements/runtime.txt  runtime only, the same versions: what the Docker image installs
# Both are for CPython 3.11 on Linux (x86_64, glibc >= 2.31 like Bytewax's wheels); the
# hashes cover every file of each pinned release, so aarch64 installs check out too.
set -euo pipefail
cd "$(dirname "$0")/.."

uv_version=0.13.8
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$uv_version" ]; then
  uv=uv
else
  source scripts/_python.sh  # .venv with a supported Python
  [ -x .venv/bin/uv ] && [ "$(.venv/bin/uv --version | cut -d' ' -f2)" = "$uv_version" ] ||
    .venv/bin/python -m pip install -q "uv==$uv_version"
  uv=.venv/bin/uv
fi

common=(--python-version 3.11 --python-platform x86_64-manylinux_2_31 --generate-hashes
        --no-header --annotation-style line --quiet "$@")
keep=()
[ -f requirements/lock.txt ] && keep=(--constraint requirements/lock.txt)
# Strip hashes from the old lock to use it as constraints (uv does not take hashes there).
if [ ${#keep[@]} -gt 0 ]; then
  sed -e 's/ *\\$//' -e '/--hash=/d' requirements/lock.txt > requirements/.previous.txt
  keep=(--constraint requirements/.previous.txt)
  for arg in "$@"; do [ "$arg" = --upgrade ] && keep=(); done
fi
"$uv" pip compile pyproject.toml --extra demo --extra test "${common[@]}" "${keep[@]}" \
  -o requirements/lock.txt
sed -e 's/ *\\$//' -e '/--hash=/d' requirements/lock.txt > requirements/.previous.txt
"$uv" pip compile pyproject.toml "${common[@]}" --constraint requirements/.previous.txt \
  -o requirements/runtime.txt
rm -f requirements/.previous.txt
echo "requirements/lock.txt: $(grep -c '^[a-z]' requirements/lock.txt) packages;" \
     "requirements/runtime.txt: $(grep -c '^[a-z]' requirements/runtime.txt) packages"
