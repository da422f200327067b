#!/usr/bin/env bash
# Create ./.venv (or $HLWQ_VENV) and install hlwq_kernels with every extra the tests use.
# On CPU machines torch==2.13.0 comes from the local CPU wheel; an existing torch (e.g. a CUDA
# build on a GPU machine) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[triton,jax,test,eval]"
