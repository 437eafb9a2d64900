# Sourced by scripts/gpu_checks.sh and scripts/gpu_study.sh: a log line, and a step under a shared time budget.
# The caller sets TAG, LOG, SUMMARY, BUDGET (s) and T0 (date +%s); STEP_TEE=1 also shows each step's output
# on stdout (else it goes to $LOG only). FAILED becomes 1 when a step fails or is skipped.
FAILED=${FAILED:-0}

say() { echo "[$TAG +$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

# step NAME LIMIT_S MIN_S CMD...: run CMD under timeout min(LIMIT_S, budget left); skip it if less than MIN_S is left.
step() {
    local name=$1 limit=$2 need=$3
    shift 3
    local left=$((BUDGET - ($(date +%s) - T0)))
    if [ "$left" -lt "$need" ]; then
        say "SKIP $name: ${left}s of the budget left, it needs ${need}s"
        echo "$name skipped (budget: ${left}s left)" >>"$SUMMARY"
        FAILED=1
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    say "START $name (timeout ${limit}s): $*"
    local t rc note=""
    t=$(date +%s)
    if [ "${STEP_TEE:-0}" = 1 ]; then
        timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
        rc=${PIPESTATUS[0]}
    else
        timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
        rc=$?
    fi
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && note=" (timed out)"
    [ "$rc" = 0 ] || FAILED=1
    say "END $name rc=$rc in $(($(date +%s) - t))s$note"
    echo "$name rc=$rc $(($(date +%s) - t))s$note" >>"$SUMMARY"
}
