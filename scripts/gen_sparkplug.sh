#!/usr/bin/env bash
# Regenerates collectors/sparkplug/sparkplug_b_pb2.py from the vendored Eclipse Tahu
# sparkplug_b.proto (EPL-2.0, notice kept in the .proto). grpcio-tools is a dev tool only
# (it bundles protoc); the runtime needs just `protobuf`, at least the version the
# generated file names in its ValidateProtobufRuntimeVersion call.
#
#   .venv/bin/pip install grpcio-tools && scripts/gen_sparkplug.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc \
    --proto_path=collectors/sparkplug \
    --python_out=collectors/sparkplug \
    --pyi_out=collectors/sparkplug \
    collectors/sparkplug/sparkplug_b.proto
echo "generated collectors/sparkplug/sparkplug_b_pb2.py and .pyi"
