#!/usr/bin/env bash
# Regenerate the split files shipped in splits/ (with their plots) from the data under ../shared/data.
#
#   benchmarks/make_shipped_splits.sh [DATA_DIR]      (default: ../shared/data, or $OODML_DATA)
#
# - splits/cars196_oodml.json: the published ooDML CARS196 ladder (import, no images needed; the devkit
#   annotations beside it turn the episode file names into cars_train/ / cars_test/ image ids).
# - splits/cub200_subset050.json: a ladder over CUB-200-2011 classes 001-050 only (the shared subset), so it is
#   not the full dataset's ladder; the subset has no conventional test class, so the start is a seeded half split.
# - splits/omniglot.json: all 1,623 characters (background = train, evaluation = test as the start), 1/2/5/10-shot.
# The last two embed every image with efficientnet_lite0 once (cached under $OODML_CACHE or ~/.cache/oodml):
# about 3,000 and 32,000 images, at 45-65 img/s on 2 free cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${OODML_DATA:-../shared/data}}"
PY="${PYTHON:-.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"

"$PY" -m oodml import-splits "$DATA/oodml_splits/cars196_splits.pkl" --dataset cars196 --out splits/cars196_oodml.json
"$PY" -m oodml make-splits cub200 --data-root "$DATA/cub200_subset" --levels 8 --k 2,5,10 --episodes 10 --seed 0 \
    --out splits/cub200_subset050.json
"$PY" -m oodml make-splits omniglot --data-root "$DATA/omniglot" --levels 8 --k 1,2,5,10 --episodes 10 --seed 0 \
    --out splits/omniglot.json
