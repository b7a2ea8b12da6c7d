# Sourced by scripts/demo.sh and scripts/test.sh: sets PY to a Python mesflow supports.
# Bytewax 0.21.1 has wheels for CPython 3.11 and 3.12 only (none for 3.13, Debian 13's
# python3), so pip would fail deep inside a build: pick a supported one, or say what to do.
# MESFLOW_PYTHON=/path/to/python3.12 chooses one explicitly.

_supported() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 11), (3, 12)) else 1)' 2>/dev/null; }

if [ -x .venv/bin/python ] && ! _supported .venv/bin/python; then
  echo "error: .venv uses Python $(.venv/bin/python -c 'import platform; print(platform.python_version())'), which mesflow does not support (3.11 or 3.12);" >&2
  echo "       remove it (rm -rf .venv) and run this script again" >&2
  exit 1
fi

PY=
for candidate in "${MESFLOW_PYTHON:-}" python3.12 python3.11 python3; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 && _supported "$(command -v "$candidate")"; then
    PY=$(command -v "$candidate")
    break
  fi
done
if [ -z "$PY" ]; then
  found=$(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo none)
  cat >&2 <<MSG
error: mesflow needs Python 3.11 or 3.12 (its stream engine, Bytewax 0.21.1, has no build
       for newer ones); python3 here is $found.
       Install one of them, then run this script again, for example:
         Debian 12, Ubuntu 24.04:        apt-get install python3 python3-venv
         Debian 13 and others:           uv python install 3.12   (https://docs.astral.sh/uv/)
                                         then: MESFLOW_PYTHON=\$(uv python find 3.12) bash $0
       or run the stack in Docker instead: docker compose up -d --build (docs/operations.md)
MSG
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || {
    echo "error: '$PY -m venv' failed: install the venv module (apt-get install python3-venv," \
         "or python3.12-venv for Python 3.12)" >&2
    exit 1
  }
fi
