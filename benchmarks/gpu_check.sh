#!/usr/bin/env bash
# The device check: the CUDA tests and the GPU benchmarks, in a few minutes, results under $OUT.
#
# Runs on a GPU machine whose python3 already has PyTorch with CUDA, NumPy, SciPy, OpenCV, PyYAML,
# safetensors, Pillow, PyArrow, Matplotlib, tqdm and Typer. The one missing package the checks need,
# pydicom (pure Python), goes in .gpu-wheels/ (ignored by git) and is carried along:
#     pip download --no-deps --only-binary=:all: -d .gpu-wheels pydicom==3.0.2
#     run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-wheels"])
set -uo pipefail
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
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
# DRR views per second, batched, with the CPU kernel measured in the same run.
timeout 200 "$PY" benchmarks/drr_gpu_bench.py --json "$OUT/drr_gpu_bench.json" 2>&1 | tee "$OUT/drr_gpu_bench.txt"
# Screening throughput on the GPU, predict measured in the same run as the peer.
timeout 200 "$PY" benchmarks/screen_bench.py --base benchmarks/data/screen_base.npz --n "${SCREEN_N:-1000}" \
    --size 1024 --device cuda --batch 64 --peer-n 100 --work /tmp --json "$OUT/screen_gpu_bench.json" 2>&1 \
    | tee "$OUT/screen_gpu_bench.txt"
echo "results in $OUT"
