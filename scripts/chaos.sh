#!/usr/bin/env bash
# The chaos suite (README, "Chaos suite"): `triage-replay chaos` starts a
# 3-node NATS cluster, two vLLM simulators, 2 routers, 2 workers per tier
# and a ledger writer (private NATS prefix and Postgres database), replays
# open loop and meanwhile SIGKILLs routers, workers of both tiers, the
# ledger writer and a NATS node at seeded random times, restarting each
# after a pause, and restarts Postgres once; then checks every request got
# exactly one final reply and the ledger booked every attempt exactly once.
# Exits non-zero when a target is missed.
#
#   scripts/chaos.sh [--short] [--system-postgres] [TRIAGE-REPLAY CHAOS OPTIONS]  e.g. --seed 7
#   full form: 2,000 requests at 25 req/s, half the sustained rate of the
#              README's pipeline benchmark
#   --short (or TRIAGE_CHAOS_SHORT=1): CI's form, 300 requests at 15 req/s
#
# Postgres: the ledger's database lives in a Postgres cluster of its own,
# created for the run (pg_createcluster, a free port, dropped at exit) and
# restarted mid-run with pg_ctlcluster — a real restart that no other test
# on the machine notices. --system-postgres restarts the system Postgres
# instead, and refuses to while any other client is connected to it.
# Without pg_createcluster (or not root) Postgres is not restarted; it says so.
#
# Everything the run starts is in its own process group, killed at exit.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TRIAGE_ROOT"

fail() {
    printf 'chaos: %s\n' "$*" >&2
    exit 1
}

SYSTEM_ADMIN_URL=${TRIAGE_TEST_ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

# restart_system_postgres: restarts the system Postgres unless a client
# other than the chaos run's own is connected (other tests use it).
restart_system_postgres() {
    local others version name
    others=$(psql "$SYSTEM_ADMIN_URL" -Atc "SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
        AND coalesce(datname, '') NOT LIKE 'triage_chaos_%'") || fail "cannot ask Postgres who is connected"
    ((others == 0)) || fail "not restarting the system Postgres: $others other client(s) connected"
    read -r version name _ < <(pg_lsclusters -h | awk '$3 == 5432' | head -n 1)
    pg_ctlcluster "$version" "$name" restart
}

if [[ ${1:-} == __restart-system-postgres ]]; then
    restart_system_postgres
    exit 0
fi

short=${TRIAGE_CHAOS_SHORT:-0} system_pg=0 keep=0
args=()
for a in "$@"; do
    case $a in
    --short) short=1 ;;
    --system-postgres) system_pg=1 ;;
    *)
        [[ $a == --keep ]] && keep=1
        args+=("$a")
        ;;
    esac
done

bin=$CARGO_TARGET_DIR/${TRIAGE_PROFILE:-debug}
for b in triage-replay triage-router triage-worker triage-ledger triage-vllm-sim; do
    [[ -x $bin/$b ]] || fail "$bin/$b is not built: run scripts/setup.sh (or cargo build --workspace)"
done

if [[ $short == 1 ]]; then
    preset=(--requests 300 --rate 15 --kills 2 --drain 60s --out "$TRIAGE_RUN/chaos-short")
else
    preset=(--requests 2000 --rate 25 --kills 4 --out chaos-out)
fi

pg_cluster=''
pg_version=''
drop_pg_cluster() {
    if [[ -n $pg_cluster ]]; then
        pg_dropcluster "$pg_version" "$pg_cluster" --stop >/dev/null 2>&1 || true
        pg_cluster=''
    fi
}
if ((system_pg)); then
    pg=(--admin-database-url "$SYSTEM_ADMIN_URL" --postgres-restart "$TRIAGE_ROOT/scripts/chaos.sh __restart-system-postgres")
elif [[ $(id -u) == 0 ]] && command -v pg_createcluster >/dev/null; then
    pg_version=$(pg_lsclusters -h | awk 'NR == 1 { print $1 }')
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    pg_cluster=triage-chaos-$$
    pg_createcluster "$pg_version" "$pg_cluster" -p "$port" --start -- --auth-host=trust --auth-local=trust >/dev/null ||
        fail "pg_createcluster $pg_version $pg_cluster failed"
    echo "chaos: private Postgres cluster $pg_version/$pg_cluster on port $port"
    pg=(--admin-database-url "postgres://postgres@127.0.0.1:$port/postgres"
        --postgres-restart "pg_ctlcluster $pg_version $pg_cluster restart")
else
    echo "chaos: NOT restarting Postgres (needs root and pg_createcluster, or --system-postgres)"
    pg=(--admin-database-url "$SYSTEM_ADMIN_URL")
fi

run_dir=$TRIAGE_RUN/chaos-$$
mkdir -p "$run_dir"
# Its own process group: the trap ends the run and every process it started.
setsid "$bin/triage-replay" chaos "${preset[@]}" "${pg[@]}" --run-dir "$run_dir" "${args[@]}" &
pid=$!
cleanup() {
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
    drop_pg_cluster
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rc=0
wait "$pid" || rc=$?
trap - EXIT
cleanup
# A failed run's logs stay (and any with --keep).
if [[ $rc == 0 && $keep == 0 ]]; then rm -rf "$run_dir"; fi
exit "$rc"
