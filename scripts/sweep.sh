#!/usr/bin/env bash
# The bundled run's robustness table: `rlhf run` over several seeds and K values, one after
# another (each run uses both cores), then one row per run from its summary.json.
#
#   scripts/sweep.sh                 # seeds 0-9 at the default K, then K = 3 and 6 at seed 0
#   SEEDS="0 1" KS="" scripts/sweep.sh
#   OUT=runs/sweep-x LENGTH_BIAS=0.75 scripts/sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
KS=${KS:-"3 6"}
OUT=${OUT:-runs/sweep-$(date +%s)}
CARGO=${CARGO:-cargo}
mkdir -p "$OUT"
$CARGO build --release -q -p rlhf
RLHF=${CARGO_TARGET_DIR:-target}/release/rlhf

one() { # name, extra args...
  local name=$1; shift
  [ -f "$OUT/$name/summary.json" ] && return 0
  local started=$(date +%s)
  "$RLHF" run --run-dir "$OUT/$name" ${LENGTH_BIAS:+--length-bias $LENGTH_BIAS} "$@" > "$OUT/$name.log" 2>&1 \
    || { echo "$name failed: see $OUT/$name.log"; return 0; }
  echo $(( $(date +%s) - started )) > "$OUT/$name/wall_seconds"
  echo "$name done in $(cat "$OUT/$name/wall_seconds") s"
}
for s in $SEEDS; do one "seed$s" --seed "$s"; done
for k in $KS; do
  printf '{"collect": {"k": %s}}\n' "$k" > "$OUT/k$k.json"
  one "k$k" --seed 0 --config "$OUT/k$k.json"
done
python3 scripts/sweep_table.py "$OUT"
