#!/usr/bin/env bash
# The device check: the CUDA tests and the GPU benchmarks, in a few minutes, results under $OUT.
#
# Runs on a GPU machine whose python3 already has PyTorch with CUDA, NumPy, SciPy, OpenCV, PyYAML,
# safetensors, Pillow, PyArrow, Matplotlib, tqdm and Typer. The missing packages the checks need go
# in .gpu-wheels/ (ignored by git) as wheels for that machine's Python and are carried along:
# pydicom, and for the training stage albumentations with its needs (albucore, pydantic,
# pydantic_core, annotated-types, typing-inspection, stringzilla, simsimd):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#         -d .gpu-wheels pydicom==3.0.2 albumentations==2.0.8 ...
# The training stage runs when DRR datasets travel too (the machine lacks the CT and spectrum
# libraries that phantoms and DRRs are made with), compact copies made here by
#     python benchmarks/travel_dataset.py DRR_TRAIN .gpu-data/train --cases 160 --views 2
#     python benchmarks/travel_dataset.py DRR_TEST .gpu-data/test
#     run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-wheels", ".gpu-data"])
# At most 8 files come back from $OUT: the training stage's outputs come as one archive.
set -uo pipefail
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
stage() { echo "$1 done after $(( $(date +%s) - START )) s" | tee -a "$OUT/stages.txt"; }
if [ -d .gpu-wheels ] && ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site .gpu-wheels/*.whl 2>&1 | tail -3
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    "$PY" -c "import torch, cv2, numpy, pydicom; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__, 'numpy', numpy.__version__, 'pydicom', pydicom.__version__)"
} 2>&1 | tee "$OUT/environment.txt"
# CUDA tests (the project's conftest needs no SimpleITK for these).
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -o filterwarnings= tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
stage "CUDA tests"
# DRR views per second, batched, with the CPU kernel measured in the same run.
timeout 120 "$PY" benchmarks/drr_gpu_bench.py ${DRR_PROFILE:+--profile} --json "$OUT/drr_gpu_bench.json" 2>&1 | tee "$OUT/drr_gpu_bench.txt"
stage "projector benchmark"
# Screening throughput on the GPU, predict measured in the same run as the peer.
timeout 180 "$PY" benchmarks/screen_bench.py --base benchmarks/data/screen_base.npz --n "${SCREEN_N:-1000}" \
    --size 1024 --device cuda --batch 64 --peer-n 100 --work /tmp --json "$OUT/screen_gpu_bench.json" 2>&1 \
    | tee "$OUT/screen_gpu_bench.txt"
stage "screening benchmark"
# Training on the carried datasets: the GPU recipe (configs/train/decomposition_gpu.yaml) and the
# CPU recipe (decomposition.yaml, the shipped model's) side by side on the one GPU, each stopped
# after TRAIN_MINUTES at the latest, then evaluated on the held-out set. Both leave the materials
# head off (the compact copies carry no material maps). The peer is the CPU recipe trained on the
# same copies on a CPU machine. Runs after the timed benchmarks, so that they have the machine.
if [ -f .gpu-data/train/dataset.json ] && [ -f .gpu-data/test/dataset.json ]; then
    W=/tmp/gpu-training
    MINUTES="${TRAIN_MINUTES:-3}"
    LIMIT=$(awk "BEGIN { print int($MINUTES * 60 + 120) }")
    RECIPES="decomposition_gpu decomposition"
    rm -rf "$W" && mkdir -p "$W"
    for recipe in $RECIPES; do
        { grep -v -e "^loader_workers:" -e "^materials_weight:" "configs/train/$recipe.yaml"
          printf "loader_workers: 6\nmaterials_weight: 0.0\n"; } > "$W/$recipe.yaml"
        timeout "$LIMIT" "$PY" -c "from cli import app; app()" train --data .gpu-data/train \
            --out "$W/model_$recipe" --config "$W/$recipe.yaml" --device "${TRAIN_DEVICE:-cuda}" --max-minutes "$MINUTES" \
            > "$W/train_$recipe.log" 2>&1 &
    done
    wait
    for recipe in $RECIPES; do
        echo "recipe $recipe:"
        grep -v "batch/s" "$W/train_$recipe.log" | tail -3
        timeout 120 "$PY" -c "from cli import app; app()" evaluate --model "$W/model_$recipe" \
            --data .gpu-data/test --out "$W/eval_$recipe" --device "${TRAIN_DEVICE:-cuda}" 2>&1 | tail -1
        # the weights (31 MB for the GPU recipe) stay behind; metadata, history, metrics and plots come back
        rm -f "$W/model_$recipe/model.safetensors" "$W/model_$recipe"/checkpoint/*.safetensors "$W"/.*.safetensors
    done 2>&1 | tee "$W/summary.txt"
    tar -czf "$OUT/gpu_training.tar.gz" -C "$W" .
    stage "training"
fi
echo "results in $OUT"
