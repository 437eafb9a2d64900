#!/usr/bin/env bash
# The GPU checks of issue 18 in one run (H200, ~8 minutes). Results under $OUT (at most 8 files come back):
#   gpu_checks.log          versions, nvidia-smi, installs, every command's stdout+stderr, timings
#   summary.txt             one line per step: name, exit code, seconds (124 = its timeout hit)
#   llm_scale.json          bench/llm_scale.py --cases 8b,14b,70b-nf4 (written after each case)
#   peer_1b.json            bench/peer_fusionbench.py --preset 1b
#   peer_small.json         bench/peer_fusionbench.py --preset small
#   learn_step_cuda.json    bench/learn_step.py --precision fp32,tf32,bf16 --granularities task,layer
#   pytest_cuda.txt         python -m pytest -q tests/test_cuda.py
#   learn_step_compile.json bench/learn_step.py --precision bf16 --compile (only if the budget has 60 s left)
#
# The H200 machine reaches no network and its image has neither bitsandbytes nor fusion-bench: they travel
# as wheels. On the development machine, once (downloads into .whl/, which it adds to .git/info/exclude):
#     bash scripts/gpu_checks.sh --fetch-wheels
# then, through the device tool:
#     run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=560)
# Without .whl/ the script tries PyPI, records the failure, and runs everything else (the NF4 case and the
# peer are then reported as skipped / exit 2). Each step has its own timeout and a total budget
# (GPU_CHECKS_BUDGET_S, default 470 s) trims or skips the last ones; a failing step never stops the others.
# GPU_CHECKS_SMOKE=1 runs the same steps with --smoke on the CPU (tiny shapes, a minute): checks the plumbing.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" .whl
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl bitsandbytes==0.50.2 fusion-bench==0.2.33 omegaconf==2.4.0
    du -sh .whl
    exit $?
fi

OUT=${OUT:-$ROOT/test-artifacts/gpu_checks}
mkdir -p "$OUT"
LOG=$OUT/gpu_checks.log
SUMMARY=$OUT/summary.txt
BUDGET=${GPU_CHECKS_BUDGET_S:-470}
T0=$(date +%s)
export PYTHONUNBUFFERED=1
: >"$LOG"
: >"$SUMMARY"

TAG=gpu_checks STEP_TEE=0
. "$ROOT/scripts/gpu_steps.sh"  # say, step

say "repo $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files; OUT=$OUT"
{ nvidia-smi || echo "nvidia-smi failed"; } >>"$LOG" 2>&1
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import sys, torch, transformers
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__)
print("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

if [ "${GPU_CHECKS_SMOKE:-0}" = 1 ]; then
    say "SMOKE: tiny shapes on the CPU, not results"
    LLM=(--smoke --device cpu); P1B=(--smoke --device cpu); PSMALL=(--smoke --device cpu)
    LSTEP=(--smoke --device cpu)
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device visible: not running the GPU benches (GPU_CHECKS_SMOKE=1 runs them tiny on the CPU)"
    exit 3
else
    LLM=(); P1B=(--preset 1b --device cuda); PSMALL=(--preset small --device cuda); LSTEP=(--device cuda)
fi

SITE=/tmp/gpu_checks_site
if ls .whl/*.whl >/dev/null 2>&1; then
    step install_wheels 90 10 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl
else
    say "no .whl/ carried (see the header): trying PyPI, which the H200 machine cannot reach"
    step install_pypi 60 10 "$PY" -m pip install -q --no-deps --no-cache-dir --target "$SITE" \
        bitsandbytes fusion-bench omegaconf
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
step import_check 60 5 "$PY" -c "
import importlib
for m in ('bitsandbytes', 'fusion_bench.models.wrappers.layer_wise_fusion'):
    try:
        importlib.import_module(m); print(m, 'importable')
    except Exception as exc:
        print(m, 'NOT importable:', type(exc).__name__, exc)
"

step llm_scale 280 60 "$PY" bench/llm_scale.py "${LLM[@]}" --cases 8b,14b,70b-nf4 --json --out "$OUT/llm_scale.json"
step peer_1b 100 40 "$PY" bench/peer_fusionbench.py "${P1B[@]}" --precision fp32,tf32,bf16 \
    --json --out "$OUT/peer_1b.json"
step peer_small 50 20 "$PY" bench/peer_fusionbench.py "${PSMALL[@]}" --precision fp32,tf32,bf16 \
    --json --out "$OUT/peer_small.json"
step learn_step 100 40 "$PY" bench/learn_step.py "${LSTEP[@]}" --precision fp32,tf32,bf16 \
    --granularities task,layer --json --out "$OUT/learn_step_cuda.json"
step pytest_cuda 90 30 bash -c "'$PY' -m pytest -q tests/test_cuda.py >'$OUT/pytest_cuda.txt' 2>&1"
# issue 18 part 4: the whole wrapped model under torch.compile (one graph, no per-layer recompiles:
# tests/test_compile.py) vs the compiled floor, bf16 autocast; last, it runs only if the budget allows
step learn_step_compile 120 60 "$PY" bench/learn_step.py "${LSTEP[@]}" --precision bf16 --granularities task \
    --reference none --compile --json --out "$OUT/learn_step_compile.json"
say "done in $(($(date +%s) - T0))s; summary:"
cat "$SUMMARY" | tee -a "$LOG"
