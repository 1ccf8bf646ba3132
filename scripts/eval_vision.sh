#!/usr/bin/env bash
# The vision table of docs/vision.md (dense, ZipVL tau .96/.975/.99, fixed/FastV/SnapKV/random at ZipVL's measured
# ratio) on the embedded default. Full size by default: easy-vqa 500 seeded test questions, 100 items per generated
# task; two processes of one thread each (~3 h on the 2-core CPU). LIMIT_VQA / LIMIT_SCENES shrink it
# (docs/vision.md's run: LIMIT_VQA=150 LIMIT_SCENES=24, 42 min). VARIANTS: ZipVLConfig presets run beside the
# paper's ZipVL at every tau (the selection study's visual half; "" for none).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-eval-vision}
common=(--max-new-tokens 4 --threads 1 --seed 0)
VARIANTS=${VARIANTS-visual_only,evict_only}
[ -n "$VARIANTS" ] && common+=(--variants "$VARIANTS")
zipvl-eval --tasks easyvqa --limit "${LIMIT_VQA:-500}" "${common[@]}" --out "$OUT/easyvqa" &
zipvl-eval --tasks multi_image,scenes_long,scenes --limit "${LIMIT_SCENES:-100}" "${common[@]}" --out "$OUT/scenes" &
wait
echo "reports: $OUT/easyvqa/report.md $OUT/scenes/report.md"
