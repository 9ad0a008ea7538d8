#!/usr/bin/env bash
# Everything a session with a lent GPU checks and measures, as one prepared run (a fresh H100 or
# H200 of the device tool; budget about 8 minutes, most of it writing and loading the random 7B):
#
#   1. here, once:  echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu_session.sh --fetch-wheels
#   2. device run:  bash benchmarks/gpu_session.sh     (carry: [".whl"], timeout_s 600)
#
# The device image has torch, triton, transformers, peft and pytest but not bitsandbytes, pydantic,
# datasets or trl (plan_memory.py runs TRL's fused LM head): step 1 downloads those wheels (about
# 50 MB) for its Python 3.12. Step 2 installs them, runs the kernel-level tests compiled on CUDA
# against bitsandbytes' CUDA kernels, then the four benchmarks (the last: peak memory against
# qlcode plan); everything lands in $OUT (the device tool's folder) or build/gpu-session.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    bitsandbytes==0.50.2 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types \
    datasets==5.2.0 dill multiprocess trl==1.16.0
  du -sh .whl
  exit 0
fi

out="${OUT:-build/gpu-session}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# kernel-level tests on CUDA tensors (the model-level ones compare at CPU fp32 precision: CI runs them)
python3 -m pytest -p no:cacheprovider tests/test_kernels.py -q \
  -k "not patched and not autocast and not training_through" 2>&1 | tee "$out/kernel-tests.txt"
python3 benchmarks/dequant.py 2>&1 | tee "$out/dequant.md"
python3 benchmarks/train_step.py --steps 5 2>&1 | tee "$out/train_step.md"
python3 benchmarks/decode.py --new-tokens 64 --iters 2 2>&1 | tee "$out/decode.md"
python3 benchmarks/plan_memory.py 2>&1 | tee "$out/plan_memory.md"
