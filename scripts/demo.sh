#!/usr/bin/env bash
# `make demo`: train a small 2D DDPM on the bundled real nuclei image (CPU, ~8 min), simulate
# HeLa-like sketches sized to fit, synthesize them with a fast sampler, write previews.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo_out}
CS=${CELLSYNTH:-.venv/bin/cellsynth}
TRAIN_TIME=${DEMO_TRAIN_TIME:-8m}
mkdir -p "$OUT"

echo "== 1/4 train a DDPM on data/dsb2018 (real, unlabelled use only; stops after $TRAIN_TIME)"
if [ -f "$OUT/run/checkpoint.pt" ]; then
  echo "(found $OUT/run: reusing it; delete it to retrain)"
else
  $CS train --data data/dsb2018 -o "$OUT/run" --patch 128,128 --batch 8 --steps 100000 \
    --lr 5e-4 --time-limit "$TRAIN_TIME" --checkpoint-every 200
fi

echo "== 2/4 simulate 3 HeLa-like sketches at the real data's nucleus size (r ~ 12 px)"
$CS simulate hela -n 3 -o "$OUT/sim" --shape 256,256 --set radius=8,14 \
  --set n_cells=30,60 --seed 1 --preview --overwrite

echo "== 3/4 synthesize them (t_start 500, 50 respaced DDPM steps)"
$CS synthesize --model "$OUT/run" --sketches "$OUT/sim" -o "$OUT/synth" --t-start 500 \
  --steps 50 --overwrite

echo "== 4/4 previews: sketch | synthetic | real"
.venv/bin/python scripts/demo_figure.py "$OUT/synth" data/dsb2018 "$OUT/preview.png"
echo "done: open $OUT/preview.png (and $OUT/synth/*.zarr in napari)"
