#!/usr/bin/env bash
# Nightly-style target (not in CI): the transformers integration on every release zipvl claims, each in its own
# brand-new venv: the floor of pyproject's range, the locked version and the newest release pip can install (marked
# when it lies outside the declared range). Each venv gets requirements/cpu.lock, then that transformers release
# (pip may move its own dependencies), then runs the integration, model-equivalence and engine-parity tests.
#   bash scripts/test-compat.sh                 # floor, locked, newest
#   bash scripts/test-compat.sh 5.20.0 5.23.0   # these versions (plus nothing else)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TESTS=(tests/reference/test_hf_compat.py tests/reference/test_model_equivalence.py tests/runtime/test_engine_vs_reference.py)
floor=$(sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
locked=$(sed -n 's/^transformers==//p' requirements/cpu.lock)
if [[ $# -gt 0 ]]; then
  versions=("$@")
else
  newest=$("$PY" -m pip index versions transformers 2>/dev/null | sed -n 's/^transformers (\(.*\))$/\1/p')
  versions=("$floor" "$locked")
  [[ -n "$newest" && "$newest" != "$locked" && "$newest" != "$floor" ]] && versions+=("$newest")
fi
WORK=$(mktemp -d /tmp/zipvl-compat.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
rows=()
status=0
for v in "${versions[@]}"; do
  echo "=== transformers $v" >&2
  venv="$WORK/tf-$v"
  start=$SECONDS
  "$PY" -m venv "$venv"
  pip="$venv/bin/python -m pip -q --disable-pip-version-check"
  if ! { $pip install --no-deps -r requirements/cpu.lock && $pip install --no-deps --no-build-isolation -e . \
         && $pip install "transformers==$v"; } >"$WORK/install-$v.log" 2>&1; then
    rows+=("$v|install failed (see below)|-|-|$((SECONDS - start))"); tail -5 "$WORK/install-$v.log" >&2; status=1; continue
  fi
  got=$("$venv/bin/python" -c "import transformers; print(transformers.__version__)")
  in_range=$("$venv/bin/python" -c "
import tomllib; from packaging.requirements import Requirement
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']
r = next(Requirement(d) for d in deps if d.startswith('transformers'))
print('yes' if r.specifier.contains('$got') else 'NO (outside ' + str(r.specifier) + ')')")
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" "${TESTS[@]}" >"$WORK/test-$v.log" 2>&1
  rc=$?
  summary=$(tail -1 "$WORK/test-$v.log" | sed 's/=//g; s/^ *//; s/ *$//')
  [[ $rc -ne 0 ]] && { status=1; grep -E "^(FAILED|ERROR)" "$WORK/test-$v.log" | head -20 >&2; }
  rows+=("$got|$in_range|$([[ $rc -eq 0 ]] && echo pass || echo FAIL)|$summary|$((SECONDS - start))")
done
printf '\n| transformers | in declared range | result | tests | seconds |\n|---|---|---|---|---|\n'
for r in "${rows[@]}"; do IFS='|' read -r a b c d e <<<"$r"; printf '| %s | %s | %s | %s | %s |\n' "$a" "$b" "$c" "$d" "$e"; done
exit $status
