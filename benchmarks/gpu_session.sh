#!/usr/bin/env bash
# Everything a session with a lent GPU checks and measures, as one prepared run (a fresh H100 or
# H200 of the device tool; budget about 8 minutes, most of it writing and loading the random 7B):
#
#   1. here, once:  echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu_session.sh --fetch-wheels
#   2. device run:  bash benchmarks/gpu_session.sh     (carry: [".whl"], timeout_s 600)
#      a rerun of some steps: bash benchmarks/gpu_session.sh kernel-tests dequant decode
#
# The device image has torch, triton, transformers, peft and pytest but not bitsandbytes, pydantic,
# datasets or trl (plan_memory.py runs TRL's fused LM head): step 1 downloads those wheels (about
# 50 MB) for its Python 3.12. Step 2 installs them, runs the kernel-level tests compiled on CUDA
# against bitsandbytes' CUDA kernels, then the four benchmarks (the last: peak memory against
# qlcode plan); everything lands in $OUT (the device tool's folder) or build/gpu-session; each step has a time limit, so one that hangs costs only its own figures.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    bitsandbytes==0.50.2 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.4 annotated-types==0.7.0 \
    typing-extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 trl==1.16.0 \
    transformers==5.24.0 peft==0.21.2 regex==2026.11.19
  # bitsandbytes ships a library per CUDA/ROCm version (120 MB unpacked): keep the CUDA 13 ones the image's
  # torch (cu130) loads, so that the wheels and the tree stay under the tool's 64 MiB
  bnb=$(ls .whl/bitsandbytes-*.whl) && zip -q -d "$bnb" 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' \
    'bitsandbytes/libbitsandbytes_rocm*.so' 'bitsandbytes/libbitsandbytes_xpu*.so'
  du -sh .whl
  exit 0
fi

out="${OUT:-build/gpu-session}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
export PYTHONUNBUFFERED=1
set +e  # from here a failing or slow step is recorded and the next one still runs
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton, transformers, peft, bitsandbytes, trl, datasets, accelerate
print("torch", torch.__version__, "cuda", torch.version.cuda, "| triton", triton.__version__, "| transformers",
      transformers.__version__, "| peft", peft.__version__, "| bitsandbytes", bitsandbytes.__version__, "| trl",
      trl.__version__, "| datasets", datasets.__version__, "| accelerate", accelerate.__version__)'; } 2>&1 | tee "$out/gpu.txt"
only=" $* "  # step names given as arguments run only those (a rerun of what failed); none: every step
step() {  # step SECONDS FILE COMMAND...: the command's output to the screen and $out/FILE, cut off after SECONDS
  local seconds=$1 file=$2; shift 2
  [[ "$only" == "  " || "$only" == *" ${file%.*} "* ]] || return 0
  timeout "$seconds" "$@" 2>&1 | tee "$out/$file"
  echo "[$file: exit ${PIPESTATUS[0]}]" | tee -a "$out/$file"
}
# kernel-level tests on CUDA tensors (the model-level ones compare at CPU fp32 precision: CI runs them)
step 120 kernel-tests.txt python3 -m pytest -p no:cacheprovider tests/test_kernels.py -q \
  -k "not patched and not autocast and not training_through"
step 100 model.txt python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; print(harness.random_codellama('7B'))"
step 45 dequant.md python3 benchmarks/dequant.py
step 140 train_step.md python3 benchmarks/train_step.py --steps 5
step 180 decode.md python3 benchmarks/decode.py --new-tokens 32 --iters 1
step 140 plan_memory.md python3 benchmarks/plan_memory.py

# Generation (issue 24, benchmarks/generation.py): samples/s on the 7B architecture for transformers
# one generate per problem, the batched engine, and vLLM; then GRPO steps/min without and with
# vLLM colocated. vLLM (hundreds of MB, its own torch build) is not among the carried wheels: where
# the image lacks it, the script says so and measures the transformers rows only.
step 300 generation.md python3 benchmarks/generation.py --gpu --gpu-problems 16 --new-tokens 64 --grpo-steps 3
