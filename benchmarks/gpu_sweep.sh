#!/usr/bin/env bash
# GPU sweep figures in at most 5 minutes on one GPU: the step under CUDA sync debug mode, K trials
# per GPU, a 16-trial stage at K = 1 and 8, one trial's step with and without the per-step sync and
# compiled, and the ratios against the targets (benchmarks/gpu_sweep.py says which).
# Usage: bash benchmarks/gpu_sweep.sh [RESULTS.jsonl] [--smoke] [more gpu_sweep.py flags]
#        (PYTHON overrides the interpreter; --smoke: a tiny CPU run that checks the script)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
OUT_JSON=${1:-$ROOT/gpu_sweep.jsonl}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
BOUND=290  # the 5-minute bound on a GPU; the CPU smoke check of a small machine gets 10 minutes
for arg in "${@:2}"; do [ "$arg" = --smoke ] && BOUND=590; done
timeout --kill-after=10 $BOUND "$PY" "$ROOT/benchmarks/gpu_sweep.py" --json "$OUT_JSON" "${@:2}"
rc=$?
[ $rc -eq 124 ] && echo "{\"figure\": \"gpu_sweep\", \"error\": \"stopped at its bound of $BOUND s\"}" | tee -a "$OUT_JSON"
exit $rc
