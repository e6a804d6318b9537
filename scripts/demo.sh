#!/usr/bin/env bash
# `make demo`: the annotation-free pipeline in about a minute on a CPU, with the DDPM that ships
# with cellsynth (bundled:dsb2018-nuclei, trained by `make bundled-model`):
# fit a nuclei preset to the unlabelled training half of data/dsb2018, simulate sketches,
# synthesize them, write a picture. `make demo-full` trains its own DDPM and Cellpose instead.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-demo_out}
CS=${CELLSYNTH:-.venv/bin/cellsynth}
PY=${PYTHON_BIN:-.venv/bin/python}
N=${DEMO_N:-3}
start=$(date +%s)

echo "== 1/4 the bundled real image, cut in two: left half = training (image only), right = held back"
$PY scripts/dsb_halves.py "$OUT" >/dev/null

echo "== 2/4 fit a nuclei preset to the unlabelled training half (sizes, count, brightness)"
$CS simulate fit --data "$OUT/real_train_unlabelled" -o "$OUT/fit.toml" --overwrite

echo "== 3/4 simulate $N sketches from it, synthesize them with bundled:dsb2018-nuclei"
$CS simulate "$OUT/fit.toml" -n "$N" -o "$OUT/sim" --seed 1 --overwrite
$CS synthesize --model bundled:dsb2018-nuclei --sketches "$OUT/sim" -o "$OUT/synth" \
  --t-start 500 --steps 50 --overwrite

echo "== 4/4 picture: sketch | synthetic with its mask outlines | real"
$PY scripts/demo_figure.py "$OUT/synth" "$OUT/real_test" "$OUT/preview.png"
echo "done in $(( $(date +%s) - start )) s"
echo "picture:   $OUT/preview.png   (fit check: $OUT/fit.png)"
echo "OME-Zarr:  $OUT/synth/*.zarr  (image + masks + sketch; napari: napari --plugin napari-ome-zarr $OUT/synth/<name>.zarr)"
echo "TIFF:      $CS export $OUT/synth -o $OUT/synth-tiff   (for Fiji)"
