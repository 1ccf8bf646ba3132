#!/usr/bin/env bash
# Install zipvl on a CPU machine from the one tested dependency set, requirements/cpu.lock: every package (transitive
# ones included) at its exact version, torch 2.13.0 from the local CPU wheel. `--no-deps` everywhere because the
# lock is complete; nothing is resolved, nothing compiles. Then the environment is checked against pyproject.toml.
# Refresh the lock: bash scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip"
${PIP} install -q --disable-pip-version-check --no-deps -r requirements/cpu.lock
# zipvl serve: Triton (from the nvidia-pytriton wheel) + the gateway's packages, pinned, on top (see the lock's notes)
${PIP} install -q --disable-pip-version-check --no-deps -r requirements/serve.lock
${PIP} install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
python scripts/check_env.py
