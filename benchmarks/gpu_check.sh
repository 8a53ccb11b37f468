#!/usr/bin/env bash
# GPU figures in at most 5 minutes: one JSON line per figure (benchmarks/gpu_check.py says which).
# Usage: bash benchmarks/gpu_check.sh [RESULTS.jsonl]     (PYTHON overrides the interpreter)
# Ray Train's start-up is measured only where `import ray` works; the rest needs torch, pyarrow,
# pandas, pyyaml and scikit-learn.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
OUT_JSON=${1:-$ROOT/gpu_check.jsonl}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
timeout --kill-after=10 290 "$PY" "$ROOT/benchmarks/gpu_check.py" --json "$OUT_JSON" "${@:2}"
rc=$?
[ $rc -eq 124 ] && echo '{"figure": "gpu_check", "error": "stopped at its 5-minute bound"}' | tee -a "$OUT_JSON"
exit $rc
