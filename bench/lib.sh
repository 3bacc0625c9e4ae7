# Shared helpers of the benchmark scripts (sourced, not run).
# Everything runs on this machine: the service, the database, the load.

set -euo pipefail
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$BENCH_ROOT/target/release/llm-feedback"
ADMIN_URL="${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_KEY="lfk_bench$(head -c 64 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | head -c 36)"
SERVER_PID=""
WORK_DIR="$(mktemp -d /tmp/llm-feedback-bench.XXXXXX)"
# The databases fresh_pg_database made, one a line: a file, because it runs
# in a command substitution's subshell, where an array append is lost.
CREATED_DBS="$WORK_DIR/created-databases"

say() { printf '%s\n' "$*" >&2; }

# Installs what the benchmarks need and a fresh machine may lack.
ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v psql >/dev/null || missing+=(postgresql-client)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        say "installing: ${missing[*]}"
        local sudo=""
        [[ $EUID -ne 0 ]] && sudo=sudo
        $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

build_release() {
    say "building the release binary"
    (cd "$BENCH_ROOT" && cargo build --release --locked --quiet)
}

# A fresh PostgreSQL database on ADMIN_URL's server; prints its URL.
fresh_pg_database() {
    local name="llm_feedback_bench_$(date +%s)_$RANDOM"
    psql "$ADMIN_URL" -qAt -c "create database $name" >/dev/null
    echo "$name" >>"$CREATED_DBS"
    python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$ADMIN_URL" "$name"
}

# start_server DATABASE_URL PORT [VAR=VALUE...]: the release binary, in the
# background, with the bench key provisioned; waits until it answers.
start_server() {
    local url="$1" port="$2"
    shift 2
    env DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" BOOTSTRAP_API_KEY="$BENCH_KEY" \
        LOG_FORMAT=json RUST_LOG="${BENCH_RUST_LOG:-info}" "$@" \
        "$BIN" serve >"$WORK_DIR/server-$port.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "the server did not start; its log:"
    cat "$WORK_DIR/server-$port.log" >&2
    return 1
}

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

# Resident set size figures of the server, in KiB: current and peak.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status"; }
peak_rss_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status"; }

cleanup() {
    stop_server
    if [[ -f $CREATED_DBS ]]; then
        local db
        while read -r db; do
            psql "$ADMIN_URL" -qAt -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
        done <"$CREATED_DBS"
    fi
    rm -rf "$WORK_DIR"
}
trap cleanup EXIT
