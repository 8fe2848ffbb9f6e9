#!/usr/bin/env bash
# The GPU measurements of issue 14 in one run, results under $OUT (default ./gpu-results), at most
# 8 files: env.txt, tests.txt, resnet20.txt, resnet50.txt, kernels_fp32.txt, kernels_bf16.txt,
# workers.txt, summary.txt.
#
# On the GPU machine (no package registry), from the project root, after copying .whl/ along
# (built here by `bash ../shared/device/wheels.sh`, whose header gives the install line used below):
#     bash benchmarks/gpu.sh            # the full set, at most 9 minutes (each step has a time budget)
#     bash benchmarks/gpu.sh --smoke    # tiny sizes, every part once; runs on a CPU-only machine too
#
# Steps run most important first, each under `timeout` (BUDGET_<name> seconds, e.g. BUDGET_workers=300);
# the benchmarks print each round as it finishes, so a step cut short still leaves its numbers and
# summary.txt says which steps ran out of time (rc=124).
#
# What it measures, side by side in one run (the card is named in env.txt):
#   tests.txt        the CUDA test subset (tests/test_cuda.py, and the cuda cases of the kernel tests if pytest exists)
#   resnet20.txt     CIFAR ResNet-20, batch 256, bf16: meta-ACON at every site vs ReLU step, eager and compiled
#   resnet50.txt     ResNet-50 at 224, batch 64, bf16: meta-ACON at bottleneck_3x3 vs ReLU step
#   kernels_*.txt    ACON-C and channel-wise meta-ACON, 128x64x56x56, fp32 and bf16 as AMP runs it (bf16 x, fp32
#                    parameters, autocast), vs SiLU and torch.compile of the formula
#   workers.txt      the quick study's trials per hour with 1, 2 and 4 workers sharing the GPU
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export MLFLOW_DISABLE_TELEMETRY=true

# The carried wheels (optuna, mlflow-skinny, mlxtend ...), installed as ../shared/device/wheels.sh says.
if [[ -d .whl ]] && ! $PY -c "import optuna, mlflow, mlxtend" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
fi

DEVICE=cuda
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || DEVICE=cpu
if [[ $DEVICE == cpu && $SMOKE == 0 ]]; then
  echo "no CUDA device here: run with --smoke for the CPU check" >&2
  exit 2
fi
if [[ $SMOKE == 1 ]]; then
  TT=(--smoke) ACT=(--smoke) WORK=(--seeds 1 --epochs 1 --dataset digits --workers 1,2) N50=(--smoke)
else
  TT=(--images 10240 --epochs 2 --rounds 2) ACT=(--shape 128,64,56,56 --rounds 3)
  WORK=(--seeds 1 --workers 1,2,4) N50=(--model resnet50 --image-size 224 --batch 64 --placement bottleneck_3x3 --images 1024 --epochs 2 --rounds 2)
fi

: > "$OUT/summary.txt"
# seconds per step (about 530 in all): one device call may run 600 s
declare -A BUDGET=([env]=20 [tests]=100 [kernels_bf16]=60 [kernels_fp32]=60 [resnet20]=110 [resnet50]=70 [workers]=110)
step() {  # step NAME COMMAND...: output to $OUT/NAME.txt, exit status and time to summary.txt
  local name=$1 start=$SECONDS rc limit
  shift
  limit=BUDGET_$name
  limit=${!limit:-${BUDGET[$name]}}
  echo "== $name (budget ${limit} s): $*" | tee -a "$OUT/summary.txt"
  PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  rc=$?
  echo "   rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.txt"
}

step env bash -c "nvidia-smi 2>&1 | head -15; $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")'"
# the whole study on CUDA (run, then report) and the kernels against the reference on the card
if $PY -c "import pytest" 2>/dev/null; then
  step tests $PY -m pytest -q -x tests/test_cuda.py tests/test_fused.py tests/test_acon_numerics.py tests/test_train.py -k "(cuda or triton) and not interpret"
else  # the GPU image has no pytest: the CUDA tests run as a script
  step tests $PY tests/test_cuda.py
fi
step kernels_bf16 $PY benchmarks/activations.py --device $DEVICE --dtype bfloat16 --amp --variants acon_c,meta_acon_channel --compare-compile "${ACT[@]}"
step kernels_fp32 $PY benchmarks/activations.py --device $DEVICE --dtype float32 --variants acon_c,meta_acon_channel --compare-compile "${ACT[@]}"
step resnet20 $PY benchmarks/train_throughput.py --device $DEVICE --model resnet20 --batch 256 --dtype bfloat16 --compare-compile "${TT[@]}"
step resnet50 $PY benchmarks/train_throughput.py --device $DEVICE --dtype bfloat16 "${N50[@]}"
step workers $PY benchmarks/workers.py --device $DEVICE "${WORK[@]}"
echo "results in $OUT"
