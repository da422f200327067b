#!/usr/bin/env bash
# Create ./.venv-llmc (or $HLWQ_LLMC_VENV) with llm-compressor 0.14 and torch 2.13 (CPU), the peer
# converter measured by bench/cpu_convert_side_by_side.py. Idempotent: does nothing when
# llm-compressor already imports there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_LLMC_VENV:-.venv-llmc}"
PY="$VENV/bin/python"
if [ -x "$PY" ] && "$PY" -c "import llmcompressor, torch; assert torch.__version__.startswith('2.13.0')" >/dev/null 2>&1; then
    exit 0
fi
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "llmcompressor==0.14.*" "torch==2.13.0"
"$PY" -c "import llmcompressor, torch; print('llmcompressor', llmcompressor.__version__, 'torch', torch.__version__)"
