#!/usr/bin/env bash
# The llm-compressor virtualenv of scripts/setup_llmcompressor.sh (./.venv-llmc, or $HLWQ_LLMC_VENV)
# plus this package, for the decoder study's peer checkpoints. Kept apart from .venv: llm-compressor
# pins its own transformers. Idempotent. Then, once (GPTQ takes the longest):
#   .venv-llmc/bin/python -m hlwq_kernels.study.peers
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_llmcompressor.sh
PY="${HLWQ_LLMC_VENV:-.venv-llmc}/bin/python"
"$PY" -c "import hlwq_kernels.study.peers" >/dev/null 2>&1 || "$PY" -m pip install -q -e .
