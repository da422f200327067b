#!/usr/bin/env bash
# Create ./.venv-peers (or $HLWQ_PEERS_VENV) with llm-compressor, for the decoder study's peer
# checkpoints (python -m hlwq_kernels.study.peers, run from that venv). Kept apart from .venv:
# llm-compressor pins its own transformers. Idempotent. Then, once (GPTQ takes the longest):
#   .venv-peers/bin/python -m hlwq_kernels.study.peers
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_PEERS_VENV:-.venv-peers}"
PY="$VENV/bin/python"
if [ -x "$PY" ] && "$PY" -c "import llmcompressor, hlwq_kernels.study.peers" >/dev/null 2>&1; then
    exit 0
fi
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install -q "torch==2.13.0" "llmcompressor==0.14.*"
"$PY" -m pip install -q -e .
"$PY" -c "import llmcompressor, torch, transformers; print('llmcompressor', llmcompressor.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
