#!/usr/bin/env bash
# Create .venv and install diffagent with its test and benchmark dependencies.
# torch is pinned to the CPU wheel this machine image carries (a plain `torch` would pull a
# multi-GB CUDA build); on a machine with a GPU, install your CUDA torch first and drop the pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev,bench]"
# onnxruntime's C API for serve/c's in-process example; without it only that example's tests skip.
bash serve/c/get_onnxruntime.sh || echo "setup: continuing without onnxruntime's C API (serve/c/README.md)"
.venv/bin/python -c "import diffagent, torch; print(f'diffagent {diffagent.__version__} ready (torch {torch.__version__})')"
