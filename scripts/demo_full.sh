#!/usr/bin/env bash
# `make demo-full`: the whole annotation-free story with nothing pre-trained, <= 30 min on a
# 2-core CPU (13.5 min measured): train a DDPM on the unlabelled training half of
# data/dsb2018, fit + simulate sketches, synthesize, train Cellpose on the synthetic images
# only, segment the held-back half and score it against its real labels (used for scoring
# only).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo_full_out}
CS=${CELLSYNTH:-.venv/bin/cellsynth}
PY=${PYTHON_BIN:-.venv/bin/python}
STEPS=${DEMO_FULL_STEPS:-1200}    # DDPM steps (~0.4 s each on a 2-core CPU)
EPOCHS=${DEMO_FULL_EPOCHS:-60}    # Cellpose epochs of 16 images
start=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - start )) s so far)"; }

echo "== 1/6 halves of data/dsb2018: left = training (image only), right = held back"
$PY scripts/dsb_halves.py "$OUT" >/dev/null

echo "== 2/6 train a DDPM on the unlabelled training half ($STEPS steps)"
$CS train --data "$OUT/real_train_unlabelled" -o "$OUT/ddpm" --patch 128,128 --batch 8 \
  --steps "$STEPS" --lr 5e-4 --checkpoint-every 200 --overwrite
stamp

echo "== 3/6 fit a preset to the unlabelled image, simulate 16 sketches"
$CS simulate fit --data "$OUT/real_train_unlabelled" -o "$OUT/fit.toml" --overwrite
$CS simulate "$OUT/fit.toml" -n 16 -o "$OUT/sim" --seed 1 --overwrite

echo "== 4/6 synthesize them (t_start 500, 50 steps)"
$CS synthesize --model "$OUT/ddpm" --sketches "$OUT/sim" -o "$OUT/synth" --t-start 500 \
  --steps 50 --overwrite
stamp

echo "== 5/6 Cellpose from scratch on the synthetic images + simulated masks only"
$CS segment train --data "$OUT/synth" -o "$OUT/seg" --epochs "$EPOCHS" \
  --images-per-epoch 16 --bsize 128 --overwrite
stamp

echo "== 6/6 segment the held-back real half; score against its real labels"
$CS segment predict --model "$OUT/seg" --images "$OUT/real_test" -o "$OUT/pred" --overwrite
$CS segment score --pred "$OUT/pred" --ref "$OUT/real_test"
$PY scripts/demo_figure.py "$OUT/synth" "$OUT/real_test" "$OUT/preview.png"
echo "done in $(( $(date +%s) - start )) s; picture $OUT/preview.png, predictions $OUT/pred/"
