#!/usr/bin/env bash
# `make cluster`: the bundled pipeline through the four services as separate processes on
# loopback, the way they run on Kubernetes: a private redis-server, two generator replicas, the
# scorer, the preference store and the learner. The learner trains (SFT, reward model, PPO);
# collection samples on the replicas and submits rankings to the preference service (with a
# bearer token), the reward model reads them back from it, PPO's rollouts go through the
# replicas, Redis and the scorer; the run directory ends with the same report.html and
# summary.json as `make run`.
#
# As on Kubernetes, no two processes share files: each runs in a working directory of its own
# (<run>.services/<name>/); only the learner writes the run directory, the preference store
# owns its database, and the scorer gets the reward model and reference policy from the learner
# over gRPC.
#
# Settings (environment): RUN_DIR (default runs/cluster-<unix time>), CONFIG (a pipeline config
# JSON for a new run), LEARNER_ARGS (extra `rlhf serve learner` flags), CARGO.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO=${CARGO:-cargo}
if ! command -v redis-server >/dev/null; then
    echo "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)" >&2
    exit 1
fi
$CARGO build --release -p rlhf
BIN=$PWD/target/release/rlhf

RUN=${RUN_DIR:-runs/cluster-$(date +%s)}
RUN=$(mkdir -p "$(dirname "$RUN")" && cd "$(dirname "$RUN")" && echo "$PWD/$(basename "$RUN")")
WORK=$RUN.services
LOGS=$WORK/logs
for d in logs redis generator-0 generator-1 scorer preferences learner; do mkdir -p "$WORK/$d"; done

# The first port at or above $1 that nothing listens on.
free_port() {
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}
REDIS_PORT=$(free_port 6390)
G0=$(free_port 50061)
G1=$(free_port $((G0 + 1)))
SCORER=$(free_port $((G1 + 1)))
PREFS=$(free_port $((SCORER + 1)))
LEARNER=$(free_port $((PREFS + 1)))
# Prometheus metrics (GET /metrics), one port per service.
M_G0=$(free_port 9464)
M_G1=$(free_port $((M_G0 + 1)))
M_SCORER=$(free_port $((M_G1 + 1)))
M_PREFS=$(free_port $((M_SCORER + 1)))
M_LEARNER=$(free_port $((M_PREFS + 1)))
REDIS=redis://127.0.0.1:$REDIS_PORT/
# Role tokens: each service checks its callers' and sends its own (the learner drives the
# generators and the preference store; the scorer fetches the judges from the learner).
token() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
RLHF_LEARNER_TOKEN=${RLHF_LEARNER_TOKEN:-$(token)}
RLHF_SCORER_TOKEN=${RLHF_SCORER_TOKEN:-$(token)}
RLHF_ADMIN_TOKEN=${RLHF_ADMIN_TOKEN:-$(token)}
export RLHF_LEARNER_TOKEN RLHF_SCORER_TOKEN RLHF_ADMIN_TOKEN

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Runs "$@" in the working directory of its own named $1, logging to $LOGS/$1.log.
in_own_dir() {
    local name=$1; shift
    (cd "$WORK/$name" && exec "$@") 2>"$LOGS/$name.log" &
    pids+=($!)
}
in_own_dir redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
# One thread per replica: on a small CPU, decoding is faster single-threaded (see README, Benchmarks).
RAYON_NUM_THREADS=1 in_own_dir generator-0 "$BIN" serve generator --listen "127.0.0.1:$G0" --id generator-0 \
    --metrics "127.0.0.1:$M_G0"
RAYON_NUM_THREADS=1 in_own_dir generator-1 "$BIN" serve generator --listen "127.0.0.1:$G1" --id generator-1 \
    --metrics "127.0.0.1:$M_G1"
in_own_dir scorer "$BIN" serve scorer --listen "127.0.0.1:$SCORER" --learner "http://127.0.0.1:$LEARNER" --redis "$REDIS" \
    --metrics "127.0.0.1:$M_SCORER"
in_own_dir preferences "$BIN" serve preferences --listen "127.0.0.1:$PREFS" --db preferences.sqlite \
    --metrics "127.0.0.1:$M_PREFS"

echo "cluster: redis :$REDIS_PORT, generators :$G0 :$G1, scorer :$SCORER, preferences :$PREFS, learner :$LEARNER" >&2
echo "cluster: run directory $RUN, service logs and working directories in $WORK" >&2
echo "cluster: metrics on http://127.0.0.1:{$M_G0,$M_G1,$M_SCORER,$M_PREFS,$M_LEARNER}/metrics" >&2
config_args=()
if [[ -n "${CONFIG:-}" ]]; then config_args=(--config "$(realpath "$CONFIG")"); fi
cd "$WORK/learner"
# shellcheck disable=SC2086
"$BIN" serve learner --listen "127.0.0.1:$LEARNER" --run-dir "$RUN" --redis "$REDIS" --metrics "127.0.0.1:$M_LEARNER" \
    --generators "http://127.0.0.1:$G0,http://127.0.0.1:$G1" --preferences "http://127.0.0.1:$PREFS" \
    "${config_args[@]}" ${LEARNER_ARGS:-}
