#!/usr/bin/env bash
# Every device path of sam-train for a few steps, then the quick benchmark; one summary
# table. On a GPU machine: scripts/gpu_check.sh (under 8 minutes on one GPU).
# Dry run on a CPU (CI): scripts/gpu_check.sh --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
exec "$PYTHON" scripts/gpu_check.py "$@"
