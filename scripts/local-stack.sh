#!/usr/bin/env bash
# Starts, stops and lists the processes of the local stack, one component at
# a time, with pid and log files under $TRIAGE_RUN ($TRIAGE_CACHE/run).
# NATS and Postgres are system services that scripts/setup.sh starts.
# `nats-cluster` is a 3-node JetStream cluster beside the system NATS
# (nodes nats-1..nats-3 from deploy/nats/cluster, client ports 4231-4233,
# store under $TRIAGE_RUN): healthy when all three answer /healthz, which
# on 2.9 needs a JetStream meta leader. Point the services at it with
# TRIAGE_NATS_URL=$TRIAGE_NATS_CLUSTER_URL TRIAGE_STREAM_REPLICAS=3.
#
#   scripts/local-stack.sh start  COMPONENT...   start (if not running) and wait until healthy
#   scripts/local-stack.sh stop   [COMPONENT...] SIGTERM, then SIGKILL after 20 s (default: all running)
#   scripts/local-stack.sh kill   COMPONENT...   SIGKILL at once (a crash, for trying failures by hand)
#   scripts/local-stack.sh status [COMPONENT...]
#   scripts/local-stack.sh log    COMPONENT      the component's log file path
#
# To add a component (router, workers, ledger, gateway, ...): add a case to
# `component` below that sets CMD (the command line) and HEALTH (an HTTP URL
# that answers 200 when ready, or empty when the process being alive is enough).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The gateway comes first so that `stop` closes the front door before the
# services behind it.
COMPONENTS=(gateway llama-tier1 llama-tier2 sim-tier1 sim-tier2 router worker-tier1 worker-tier2 shadow ledger
    cost-exporter nats-1 nats-2 nats-3)
# Replicas of every stream the services create (3 on the cluster).
REPLICAS=${TRIAGE_STREAM_REPLICAS:-1}

# Which servers the workers call: llama (real local models), sim (the vLLM
# simulators) or vllm (TRIAGE_TIER1_URL / TRIAGE_TIER2_URL, real vLLM).
TRIAGE_BACKEND=${TRIAGE_BACKEND:-llama}
tier_url() {
    case $TRIAGE_BACKEND in
    llama) printf 'http://127.0.0.1:%s' "$([[ $1 == 1 ]] && echo "$TRIAGE_TIER1_PORT" || echo "$TRIAGE_TIER2_PORT")" ;;
    sim) printf 'http://127.0.0.1:%s' "$([[ $1 == 1 ]] && echo "$TRIAGE_SIM1_PORT" || echo "$TRIAGE_SIM2_PORT")" ;;
    vllm)
        local v=TRIAGE_TIER$1_URL
        [[ -n ${!v:-} ]] || fail "TRIAGE_BACKEND=vllm needs $v"
        printf '%s' "${!v}"
        ;;
    *) fail "TRIAGE_BACKEND must be llama, sim or vllm, not '$TRIAGE_BACKEND'" ;;
    esac
}

# TRIAGE_PROFILE=release runs the release binaries (benchmarks); the
# default is the debug build that scripts/setup.sh makes.
bin() { printf '%s/%s/%s' "$CARGO_TARGET_DIR" "${TRIAGE_PROFILE:-debug}" "$1"; }

# component NAME: sets CMD and HEALTH for NAME.
component() {
    case $1 in
    llama-tier1 | llama-tier2)
        local n=${1#llama-tier} port model alias
        if [[ $n == 1 ]]; then
            port=$TRIAGE_TIER1_PORT model=$TRIAGE_TIER1_MODEL alias=$TRIAGE_TIER1_ALIAS
        else
            port=$TRIAGE_TIER2_PORT model=$TRIAGE_TIER2_MODEL alias=$TRIAGE_TIER2_ALIAS
        fi
        [[ -x $TRIAGE_LLAMA_SERVER ]] || fail "$TRIAGE_LLAMA_SERVER is missing: run scripts/setup.sh"
        [[ -f $model ]] || fail "model $model is missing: run scripts/setup.sh"
        CMD=("$TRIAGE_LLAMA_SERVER" -m "$model" --host 127.0.0.1 --port "$port"
            -t "$TRIAGE_LLAMA_THREADS" -c "$TRIAGE_LLAMA_CONTEXT" --alias "$alias" --metrics)
        HEALTH=http://127.0.0.1:$port/health
        ;;
    sim-tier1 | sim-tier2)
        # Simulated vLLM at realistic latencies: an 8B INT4 and a 70B FP8
        # server under light load (ttft and inter-token ms; overridable with
        # TRIAGE_SIM<N>_TTFT_MS / TRIAGE_SIM<N>_ITL_MS).
        local n=${1#sim-tier} port ttft itl
        if [[ $n == 1 ]]; then
            port=$TRIAGE_SIM1_PORT ttft=${TRIAGE_SIM1_TTFT_MS:-40} itl=${TRIAGE_SIM1_ITL_MS:-12}
        else
            port=$TRIAGE_SIM2_PORT ttft=${TRIAGE_SIM2_TTFT_MS:-120} itl=${TRIAGE_SIM2_ITL_MS:-30}
        fi
        CMD=("$(bin triage-vllm-sim)" --model "sim-tier$n" --port "$port" --ttft-ms "$ttft" --itl-ms "$itl"
            --output-tokens 16-64)
        HEALTH=http://127.0.0.1:$port/health
        ;;
    router)
        CMD=(env TRIAGE_ROUTER_METRICS_ADDR=127.0.0.1:9101 TRIAGE_ROUTER_NATS__URL="$TRIAGE_NATS_URL"
            TRIAGE_ROUTER_NATS__PREFIX="${TRIAGE_PREFIX:-}" TRIAGE_ROUTER_NATS__STREAMS__REPLICAS="$REPLICAS"
            TRIAGE_ROUTER_SELF_RATING__ENABLED="${TRIAGE_SELF_RATING:-false}"
            TRIAGE_ROUTER_SELF_RATING__BACKEND__BASE_URL="${TRIAGE_SELF_RATING_URL:-http://127.0.0.1:$TRIAGE_TIER2_PORT}"
            TRIAGE_ROUTER_SELF_RATING__MODEL="${TRIAGE_SELF_RATING_MODEL:-$TRIAGE_TIER2_ALIAS}"
            TRIAGE_ROUTER_SELF_RATING__TIMEOUT="${TRIAGE_SELF_RATING_TIMEOUT:-1500ms}"
            TRIAGE_ROUTER_POLICY__ALLOW_TIER_OVERRIDE="${TRIAGE_ALLOW_TIER_OVERRIDE:-true}"
            "$(bin triage-router)" run)
        HEALTH=http://127.0.0.1:9101/metrics
        ;;
    worker-tier1 | worker-tier2)
        local n=${1#worker-tier}
        CMD=(env TRIAGE_WORKER_METRICS_ADDR=127.0.0.1:$((9471 + n)) TRIAGE_WORKER_NATS__URL="$TRIAGE_NATS_URL"
            TRIAGE_WORKER_NATS__PREFIX="${TRIAGE_PREFIX:-}" TRIAGE_WORKER_NATS__STREAMS__REPLICAS="$REPLICAS"
            TRIAGE_WORKER_BACKEND_URLS="$(tier_url "$n")" TRIAGE_WORKER_SHADOW__FRACTION="${TRIAGE_SHADOW_FRACTION:-0}"
            "$(bin triage-worker)" run --tier "$n")
        HEALTH=http://127.0.0.1:$((9471 + n))/metrics
        ;;
    shadow)
        # Shadow answers and their judge (tier 2 by default) for the share
        # of answers the workers sample: TRIAGE_SHADOW_FRACTION (0-1) when
        # starting the workers. The model names are the tier servers' own.
        local m1 m2
        if [[ $TRIAGE_BACKEND == sim ]]; then m1=sim-tier1 m2=sim-tier2; else m1=$TRIAGE_TIER1_ALIAS m2=$TRIAGE_TIER2_ALIAS; fi
        CMD=(env TRIAGE_SHADOW_METRICS_ADDR=127.0.0.1:9474 TRIAGE_SHADOW_NATS__URL="$TRIAGE_NATS_URL"
            TRIAGE_SHADOW_NATS__PREFIX="${TRIAGE_PREFIX:-}" TRIAGE_SHADOW_NATS__STREAMS__REPLICAS="$REPLICAS"
            TRIAGE_SHADOW_TIER1__URL="$(tier_url 1)" TRIAGE_SHADOW_TIER1__MODEL="${TRIAGE_SHADOW_TIER1_MODEL:-$m1}"
            TRIAGE_SHADOW_TIER2__URL="$(tier_url 2)" TRIAGE_SHADOW_TIER2__MODEL="${TRIAGE_SHADOW_TIER2_MODEL:-$m2}"
            "$(bin triage-shadow)" run)
        HEALTH=http://127.0.0.1:9474/metrics
        ;;
    ledger)
        CMD=(env TRIAGE_LEDGER_METRICS_ADDR=127.0.0.1:9470 TRIAGE_LEDGER_NATS__PREFIX="${TRIAGE_PREFIX:-}"
            TRIAGE_LEDGER_NATS__STREAMS__REPLICAS="$REPLICAS"
            "$(bin triage-ledger)" run)
        HEALTH=http://127.0.0.1:9470/metrics
        ;;
    cost-exporter)
        CMD=(env TRIAGE_COST_EXPORTER_METRICS_ADDR=127.0.0.1:9471 TRIAGE_COST_EXPORTER_NATS__PREFIX="${TRIAGE_PREFIX:-}"
            "$(bin triage-cost-exporter)" run)
        HEALTH=http://127.0.0.1:9471/metrics
        ;;
    gateway)
        # The OpenAI-compatible API on TRIAGE_GATEWAY_LISTEN (127.0.0.1:8080;
        # every TRIAGE_GATEWAY_* variable is a gateway setting). Healthy only
        # once NATS answers and the streams exist: start it after the router
        # or a worker, which create them.
        local listen=${TRIAGE_GATEWAY_LISTEN:-127.0.0.1:8080}
        CMD=(env "TRIAGE_GATEWAY_LISTEN=$listen" TRIAGE_GATEWAY_METRICS_ADDR="${TRIAGE_GATEWAY_METRICS_ADDR:-127.0.0.1:9102}"
            TRIAGE_GATEWAY_NATS__URL="$TRIAGE_NATS_URL" TRIAGE_GATEWAY_NATS__PREFIX="${TRIAGE_PREFIX:-}"
            TRIAGE_GATEWAY_NATS__STREAMS__REPLICAS="$REPLICAS"
            "$(bin triage-gateway)" run)
        HEALTH=http://$listen/health
        ;;
    nats-1 | nats-2 | nats-3)
        # The node's own file; only the store directory comes from here.
        # Alive is healthy for one node: /healthz needs a quorum (see cluster_healthy).
        local server
        server=$(command -v nats-server || echo /usr/sbin/nats-server)
        CMD=("$server" -c "$TRIAGE_ROOT/deploy/nats/cluster/$1.conf" -sd "$TRIAGE_RUN/$1")
        HEALTH=http://127.0.0.1:$((8230 + ${1#nats-}))/varz
        ;;
    *) fail "unknown component '$1' (known: ${COMPONENTS[*]} nats-cluster)" ;;
    esac
}

fail() {
    printf 'local-stack: %s\n' "$*" >&2
    exit 1
}

pidfile() { printf '%s/%s.pid' "$TRIAGE_RUN" "$1"; }
logfile() { printf '%s/%s.log' "$TRIAGE_RUN" "$1"; }

# start_time PID: the process's start time in clock ticks since boot; with
# the pid it identifies a process even after its pid is reused.
start_time() { [[ -r /proc/$1/stat ]] && sed -E 's/^.*\) //' "/proc/$1/stat" | cut -d' ' -f20; }

# running_pid NAME: the pid of NAME if it is alive and still the process we
# started, else nothing.
running_pid() {
    local f pid started
    f=$(pidfile "$1")
    [[ -f $f ]] || return 1
    read -r pid started <"$f" || return 1
    [[ -n $pid && $(start_time "$pid") == "$started" ]] || return 1
    printf '%s' "$pid"
}

healthy() { curl -fs -o /dev/null --max-time 2 "$1"; }

start() {
    local name=$1 pid log deadline
    component "$name"
    if pid=$(running_pid "$name"); then
        echo "$name: already running (pid $pid)"
        return 0
    fi
    if [[ -n $HEALTH ]] && healthy "$HEALTH"; then
        fail "$name: something not started by this script already answers at $HEALTH (stop it or change the port)"
    fi
    mkdir -p "$TRIAGE_RUN"
    log=$(logfile "$name")
    # setsid: its own process group, so a Ctrl-C in this terminal does not
    # reach it and `stop` is what ends it.
    setsid "${CMD[@]}" >"$log" 2>&1 </dev/null &
    pid=$!
    printf '%s %s\n' "$pid" "$(start_time "$pid")" >"$(pidfile "$name")"
    echo "$name: started pid $pid, log $log"
    [[ -z $HEALTH ]] && return 0
    deadline=$(($(date +%s) + ${TRIAGE_START_TIMEOUT:-180}))
    until healthy "$HEALTH"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            rm -f "$(pidfile "$name")"
            fail "$name exited during start-up; log: $log"
        fi
        (($(date +%s) < deadline)) || fail "$name not healthy at $HEALTH after ${TRIAGE_START_TIMEOUT:-180} s; log: $log"
        sleep 0.5
    done
    echo "$name: healthy at $HEALTH"
}

stop() {
    local name=$1 pid i
    if ! pid=$(running_pid "$name"); then
        rm -f "$(pidfile "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$name: still running 20 s after SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$name")"
    echo "$name: stopped (pid $pid)"
}

kill_() {
    local name=$1 pid
    if pid=$(running_pid "$name"); then
        kill -KILL "$pid" 2>/dev/null || true
        echo "$name: killed (SIGKILL, pid $pid)"
    fi
    rm -f "$(pidfile "$name")"
}

CLUSTER=(nats-1 nats-2 nats-3)

# cluster_healthy: all three nodes answer /healthz (so a meta leader exists).
cluster_healthy() {
    local n
    for n in 1 2 3; do healthy "http://127.0.0.1:$((8230 + n))/healthz" || return 1; done
}

start_cluster() {
    local n deadline
    for n in "${CLUSTER[@]}"; do start "$n"; done
    deadline=$(($(date +%s) + ${TRIAGE_START_TIMEOUT:-180}))
    until cluster_healthy; do
        (($(date +%s) < deadline)) || fail "nats-cluster: no JetStream meta leader after ${TRIAGE_START_TIMEOUT:-180} s"
        sleep 0.5
    done
    echo "nats-cluster: healthy (URLs $TRIAGE_NATS_CLUSTER_URL)"
}

# expand NAME...: nats-cluster stands for its three nodes.
expand() {
    local n
    for n in "$@"; do
        if [[ $n == nats-cluster ]]; then printf '%s\n' "${CLUSTER[@]}"; else printf '%s\n' "$n"; fi
    done
}

status() {
    local name=$1 pid
    if pid=$(running_pid "$name"); then
        printf '%-16s running  pid %-8s log %s\n' "$name" "$pid" "$(logfile "$name")"
    else
        printf '%-16s stopped\n' "$name"
    fi
}

action=${1:-}
shift || true
names=("$@")
case $action in
start)
    ((${#names[@]})) || fail "start which component? (${COMPONENTS[*]} nats-cluster)"
    for n in "${names[@]}"; do
        if [[ $n == nats-cluster ]]; then start_cluster; else start "$n"; fi
    done
    ;;
stop)
    ((${#names[@]})) || names=("${COMPONENTS[@]}")
    while read -r n; do stop "$n"; done < <(expand "${names[@]}")
    ;;
kill)
    ((${#names[@]})) || fail "kill which component?"
    while read -r n; do kill_ "$n"; done < <(expand "${names[@]}")
    ;;
status)
    ((${#names[@]})) || names=("${COMPONENTS[@]}")
    while read -r n; do status "$n"; done < <(expand "${names[@]}")
    if [[ " ${names[*]} " == *" nats-cluster "* ]]; then
        if cluster_healthy; then echo "nats-cluster     healthy"; else echo "nats-cluster     not healthy"; fi
    fi
    ;;
log)
    ((${#names[@]} == 1)) || fail "log takes one component"
    logfile "${names[0]}"
    echo
    ;;
*)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    [[ -z $action || $action == -h || $action == --help ]] || exit 2
    ;;
esac
