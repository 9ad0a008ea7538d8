#!/usr/bin/env bash
# Everything a session with a lent GPU checks and measures, as one prepared run (a fresh H100 or
# H200 of the device tool; one call stays within BUDGET, 480 s by default, the train-step race first):
#
#   1. here, once:  echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu_session.sh --fetch-wheels
#   2. device run:  bash benchmarks/gpu_session.sh     (carry: [".whl"], timeout_s 600)
#      a rerun of some steps: bash benchmarks/gpu_session.sh kernel-tests dequant decode
#      the steps run in order of importance (the train-step race first) inside BUDGET seconds (default
#      480, so a call of timeout_s 600 returns): a step starts only with at least half its own limit left,
#      runs for at most what is left, and one that does not start says "[FILE: not run, budget]"; a second
#      call takes those by name, e.g. bash benchmarks/gpu_session.sh train_step_compile train_24gb
#   3. unsloth, if the time allows (a call of its own: unsloth patches transformers on import):
#      here:        echo /.whl-unsloth/ >> .git/info/exclude && bash benchmarks/gpu_session.sh --fetch-wheels unsloth
#      device run:  bash benchmarks/gpu_session.sh unsloth     (carry: [".whl", ".whl-unsloth"], timeout_s 600)
#
# The device image has torch, triton, transformers, peft and pytest but not bitsandbytes, pydantic,
# datasets or trl (plan_memory.py runs TRL's fused LM head): step 1 downloads those wheels (about
# 50 MB) and liger-kernel's (0.9 MB) for its Python 3.12. Step 2 installs them, runs the kernel-level
# tests compiled on CUDA against bitsandbytes' CUDA kernels, then the benchmarks (train_step: the
# plain stack, qlcode and each of its options, 3 repeats in alternating order; the planned longest
# sequence on a 24 GiB cap; `qlcode train` itself on python-sft.yaml's shapes under the cap; peak
# memory against qlcode plan); everything lands in $OUT (the device tool's folder) or
# build/gpu-session; each step has a time limit, so one that hangs costs only its own figures.
# unsloth 2026.10.9 pins transformers <= 5.17 and trl <= 1.15: step 3 puts those versions in front
# of ours, in a directory of their own (measured here: .whl 27.9 MB, .whl-unsloth 18.8 MB with the
# unsloth wheel's studio/ web app, 86 of its 88 MB unpacked, removed; the tracked tree 16.5 MB:
# 63.2 MB of the carry's 67.1 MB (64 MiB). unsloth's other dependencies (xformers, diffusers,
# torchvision, hf_transfer) are not carried: if it will not import without them, its row says so).
set -euo pipefail
cd "$(dirname "$0")/.."

download() {  # download DIR PACKAGE==VERSION...: wheels for the device's Python 3.12, no dependencies
  local dir=$1; shift
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$dir" "$@"
  # bitsandbytes ships a library per CUDA/ROCm version (120 MB unpacked): keep the CUDA 13 ones the image's
  # torch (cu130) loads, so that the wheels and the tree stay under the tool's 64 MiB
  bnb=$(ls "$dir"/bitsandbytes-*.whl 2>/dev/null) && zip -q -d "$bnb" 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' \
    'bitsandbytes/libbitsandbytes_rocm*.so' 'bitsandbytes/libbitsandbytes_xpu*.so' || true
}
COMMON="bitsandbytes==0.50.2 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.4 annotated-types==0.7.0
  typing-extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 regex==2026.11.19"
if [[ "${1:-}" == "--fetch-wheels" && "${2:-}" == "unsloth" ]]; then
  download .whl-unsloth unsloth==2026.10.9 unsloth-zoo==2026.10.9 transformers==5.17.0 trl==1.15.0 \
    tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 shtab==1.13.0 json5==0.17.3 nest-asyncio==1.6.0
  zip -q -d .whl-unsloth/unsloth-*.whl 'studio/*'  # unsloth's web app: not the library
  du -sh .whl-unsloth
  exit 0
fi
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # shellcheck disable=SC2086
  download .whl $COMMON trl==1.16.0 transformers==5.24.0 liger-kernel==0.8.5
  du -sh .whl
  exit 0
fi

out="${OUT:-build/gpu-session}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
if [[ "${1:-}" == "unsloth" ]]; then  # step 3: unsloth alone, with the library versions it accepts in front
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-unsloth .whl-unsloth/*.whl
  export PYTHONPATH="/tmp/site-unsloth:/tmp/site:$PWD"
  timeout 500 python3 benchmarks/train_step.py --unsloth 2>&1 | tee "$out/train_step_unsloth.md"
  echo "[train_step_unsloth.md: exit ${PIPESTATUS[0]}]" | tee -a "$out/train_step_unsloth.md"
  exit 0
fi
export PYTHONPATH="/tmp/site:$PWD"
set +e  # from here a failing or slow step is recorded and the next one still runs
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton, transformers, peft, bitsandbytes, trl, datasets, accelerate, liger_kernel
from importlib.metadata import version
print("torch", torch.__version__, "cuda", torch.version.cuda, "| triton", triton.__version__, "| transformers",
      transformers.__version__, "| peft", peft.__version__, "| bitsandbytes", bitsandbytes.__version__, "| trl",
      trl.__version__, "| datasets", datasets.__version__, "| accelerate", accelerate.__version__,
      "| liger-kernel", version("liger-kernel"))'; } 2>&1 | tee "$out/gpu.txt"
only=" $* "  # step names given as arguments run only those (a rerun of what failed); none: every step
deadline=$((SECONDS + ${BUDGET:-480}))
step() {  # step SECONDS FILE COMMAND...: the command's output to the screen and $out/FILE, cut off after SECONDS
  local seconds=$1 file=$2 left=$((deadline - SECONDS)); shift 2
  [[ "$only" == "  " || "$only" == *" ${file%.*} "* ]] || return 0
  if (( left < seconds / 2 )); then echo "[$file: not run, budget]" | tee "$out/$file"; return 0; fi
  timeout "$(( seconds < left ? seconds : left ))" "$@" 2>&1 | tee "$out/$file"
  echo "[$file: exit ${PIPESTATUS[0]}]" | tee -a "$out/$file"
}
step 100 model.txt python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; print(harness.random_codellama('7B'))"
step 240 train_step.md python3 benchmarks/train_step.py --repeats 3 --steps 5
# kernel-level tests on CUDA tensors (the model-level ones compare at CPU fp32 precision: CI runs them)
step 120 kernel-tests.txt python3 -m pytest -p no:cacheprovider tests/test_kernels.py tests/test_fused_qlora.py -q \
  -k "not patched and not autocast and not training_through and not peft and not plain_path"
step 90 dequant.md python3 benchmarks/dequant.py --repeats 5
step 60 mlp_memory.md python3 benchmarks/mlp_memory.py
step 60 offload-tests.txt python3 -m pytest -p no:cacheprovider tests/test_train_speed.py -q -k "on_cuda"
# train.compile against qlcode's default (inductor's compile of the 7B: minutes, hence a step of its own)
step 240 train_step_compile.md python3 benchmarks/train_step.py --repeats 3 --steps 5 --only qlcode "qlcode, train.compile=true"
# the planned longest sequence for CodeLlama-7B on 24 GiB (qlcode plan --longest, fused blocks and offloading: 84,992
# tokens, so the MLP runs in tiles and offloading prefetches), one step under the cap
longest=$(python3 -m qlcode.cli plan recipes/python-sft.yaml --gpu 24GB --longest train.micro_batch_size=1 data.packing=false \
  train.offload_activations=true 2>/dev/null | sed -n 's/.*: \([0-9,]*\) tokens.*/\1/p' | tr -d ,)
step 200 longest_24gb.md python3 benchmarks/train_step.py --batch 1 --seq-len "${longest:-65536}" --memory-cap 24 --repeats 1 \
  --steps 1 --warmup 1 --only "qlcode, train.offload_activations=true"
step 150 train_24gb.txt python3 benchmarks/train_capped.py --memory-cap 24
step 180 decode.md python3 benchmarks/decode.py --new-tokens 32 --iters 1
step 140 plan_memory.md python3 benchmarks/plan_memory.py

# Generation (issue 24, benchmarks/generation.py): samples/s on the 7B architecture for transformers
# one generate per problem, the batched engine, and vLLM; then GRPO steps/min without and with
# vLLM colocated. vLLM (hundreds of MB, its own torch build) is not among the carried wheels: where
# the image lacks it, the script says so and measures the transformers rows only.
step 300 generation.md python3 benchmarks/generation.py --gpu --gpu-problems 16 --new-tokens 64 --grpo-steps 3
