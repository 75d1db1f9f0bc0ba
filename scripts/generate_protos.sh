#!/usr/bin/env bash
# Regenerate the checked-in Python code for protos/ (needs the grpcio-tools that pyproject.toml pins; the runtime does not).
# Usage: scripts/generate_protos.sh [OUT_DIR]   (default: repository root; tests pass a temp dir)
# Set PYTHON to choose the interpreter (default: python).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo}"
mkdir -p "$out"
cd "$repo"
"${PYTHON:-python}" -m grpc_tools.protoc -Iprotos \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  protos/fedsa_secure/proto/federation.proto
