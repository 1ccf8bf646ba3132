#!/usr/bin/env bash
# The venv the NVIDIA kvpress peer runs in (scripts/kvpress_peer.py): kvpress 0.5.5 pins transformers < 5.3, zipvl
# needs >= 5.17, so the two never share an interpreter. Usage: bash scripts/kvpress_env.sh [VENV] (default
# .venv-kvpress). torch is pinned to the local CPU wheel so pip does not pull a CUDA build.
set -euo pipefail
VENV="${1:-.venv-kvpress}"
python -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 "kvpress==0.5.5" "transformers<5.3" \
    "gguf>=0.10" sentencepiece
"$VENV/bin/python" -c "import kvpress, transformers; print('kvpress', kvpress.__version__ if hasattr(kvpress, '__version__') else '0.5.5', 'transformers', transformers.__version__)"
