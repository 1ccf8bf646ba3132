#!/usr/bin/env bash
# The fast CI suite (CPU): everything except tests marked slow. The nightly target is `pytest -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest -q -m "not slow" "$@"
