#!/usr/bin/env bash
# The GPU checks of the model, as one script for a lent GPU machine (see bench/README.md):
# the model tests on CUDA, the host synchronisations of a training step, then the THUMOS-scale epoch benchmark in fp32 and with bf16 autocast.
# The THUMOS'14 durations come from data/reference (part of the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ISSF_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/model/test_model.py
"$PY" bench/gpu_sync_check.py  # host synchronisations of a CUDA training step (expected 1)
"$PY" bench/bench_train.py --device cuda --threads 8 --workers 4 --epochs 5 --modes batched,single
"$PY" bench/bench_train.py --device cuda --threads 8 --workers 4 --epochs 5 --modes batched --amp
