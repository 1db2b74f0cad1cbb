#!/usr/bin/env bash
# The device check: the CUDA tests and the GPU benchmarks, in a few minutes, results under $OUT.
#
# Runs on a GPU machine whose python3 already has PyTorch with CUDA, NumPy, SciPy, OpenCV and
# PyYAML (the rendering engine needs nothing else). Extra wheels, if a later check needs them, go
# in .gpu-wheels/ (ignored by git) and are carried along:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-wheels"])
set -uo pipefail
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d .gpu-wheels ]; then
    "$PY" -m pip install --quiet --no-index --find-links .gpu-wheels .gpu-wheels/*.whl 2>&1 | tail -3
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/environment.txt"
# CUDA tests (the project's conftest needs no SimpleITK for these).
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -o filterwarnings= tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
# Views per second, batched, with the CPU kernel measured in the same run.
timeout 240 "$PY" benchmarks/drr_gpu_bench.py --json "$OUT/drr_gpu_bench.json" 2>&1 | tee "$OUT/drr_gpu_bench.txt"
echo "results in $OUT"
