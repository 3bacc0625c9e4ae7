#!/usr/bin/env bash
# The project's test command: finds (or starts) a PostgreSQL, then runs
# `cargo test --locked --all-targets`.
#
# Usage:
#   scripts/test.sh                      # everything
#   scripts/test.sh create               # only tests whose name contains "create"
#   scripts/test.sh -- --nocapture       # arguments after `--` go to the test harness
#
# A full run (no filter) runs the latency-bound tests (ISOLATED below) after
# the rest, one at a time.
#
# Arguments before `--` go to `cargo test`, arguments after it to the test
# binaries. The harness gets `--test-threads ${TEST_THREADS:-6}` unless you
# pass your own --test-threads.
#
# Which PostgreSQL is used, in this order:
#   1. TEST_DATABASE_URL, if set (any PostgreSQL >= 13 whose user may create
#      databases; each test creates and drops its own database);
#   2. a server answering at 127.0.0.1:5432, as postgres://postgres@127.0.0.1:5432/postgres;
#   3. a throwaway cluster started from the installed PostgreSQL binaries under
#      target/pg-test/ (data dir reused between runs), listening on 127.0.0.1
#      port TEST_PG_PORT (default 54329, or the next free port), stopped again
#      when this script exits.
#
# Environment knobs:
#   TEST_DATABASE_URL         use this server, skip everything else
#   TEST_THREADS              test harness threads (default 6)
#   TEST_PG_PORT              port of the throwaway cluster (default 54329)
#   TEST_PG_FORCE_THROWAWAY=1 ignore a server on 127.0.0.1:5432 and start the
#                             throwaway cluster anyway (used to test this script)
#
# A shared server on 5432 is never stopped or modified by this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf 'test.sh: %s\n' "$*" >&2; }

# find_pg_tool NAME: NAME from PATH, else from the highest /usr/lib/postgresql/*/bin.
find_pg_tool() {
    local name="$1" dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [[ -x "$dir/$name" ]]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done
    return 1
}

# port_in_use PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# as_pg CMD...: run CMD as the `postgres` system user when we are root
# (initdb and postgres refuse to run as root), else as ourselves. As root it
# runs from / since the postgres user may not be able to enter our cwd.
as_pg() {
    if [[ $EUID -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")")
    fi
}

PG_CTL=""
PG_DATA=""
PG_STARTED=0
PG_TMP_DIR=""
PG_SOCK_TMP_DIR=""

cleanup() {
    if [[ $PG_STARTED -eq 1 ]]; then
        log "stopping the throwaway PostgreSQL cluster ($PG_DATA)"
        as_pg "$PG_CTL" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 ||
            log "warning: could not stop the cluster in $PG_DATA"
    fi
    if [[ -n $PG_TMP_DIR ]]; then rm -rf "$PG_TMP_DIR"; fi
    if [[ -n $PG_SOCK_TMP_DIR ]]; then rm -rf "$PG_SOCK_TMP_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

no_postgres() {
    cat >&2 <<'EOF'
test.sh: no PostgreSQL available for the test suite.

The tests need a PostgreSQL server (version 13 or newer). Either:

  * install PostgreSQL, and this script will use the server on 127.0.0.1:5432
    or start a throwaway cluster under target/pg-test/ by itself:
        Debian/Ubuntu:  sudo apt-get install -y postgresql
        Fedora/RHEL:    sudo dnf install -y postgresql-server
        macOS:          brew install postgresql
  * or point TEST_DATABASE_URL at any PostgreSQL >= 13 whose user may create
    databases, e.g.
        TEST_DATABASE_URL=postgres://user:password@host:5432/postgres scripts/test.sh
EOF
    exit 1
}

start_throwaway_cluster() {
    local initdb pg_dir sock_dir port want_version have_version
    initdb="$(find_pg_tool initdb)" || no_postgres
    # Use pg_ctl from the same installation as initdb.
    PG_CTL="$(dirname "$initdb")/pg_ctl"
    [[ -x $PG_CTL ]] || PG_CTL="$(find_pg_tool pg_ctl)" || no_postgres

    if [[ $EUID -eq 0 ]] && ! getent passwd postgres >/dev/null; then
        log "running as root, but there is no 'postgres' system user to run initdb/postgres as."
        log "Create one (useradd --system postgres), run as a normal user, or set TEST_DATABASE_URL."
        exit 1
    fi

    pg_dir="$ROOT/target/pg-test"
    mkdir -p "$pg_dir"
    if [[ $EUID -eq 0 ]]; then
        chown -R postgres: "$pg_dir"
        chmod 755 "$pg_dir"
        # Every directory above target/pg-test must be traversable for the
        # postgres user; if it is not (e.g. a checkout under /root), fall back
        # to a temporary directory that is deleted again on exit.
        if ! as_pg test -w "$pg_dir"; then
            PG_TMP_DIR="$(mktemp -d /tmp/llm-feedback-pg.XXXXXX)"
            chown postgres: "$PG_TMP_DIR"
            log "note: $pg_dir is not reachable for the postgres user;"
            log "      using the temporary directory $PG_TMP_DIR instead (not reused between runs)"
            pg_dir="$PG_TMP_DIR"
        fi
    fi
    PG_DATA="$pg_dir/data"
    sock_dir="$pg_dir"
    # Unix socket paths are limited to ~107 bytes.
    if (( ${#sock_dir} > 80 )); then
        PG_SOCK_TMP_DIR="$(mktemp -d /tmp/llm-feedback-pgsock.XXXXXX)"
        [[ $EUID -eq 0 ]] && chown postgres: "$PG_SOCK_TMP_DIR"
        sock_dir="$PG_SOCK_TMP_DIR"
    fi

    # (Re)initialise the data dir unless a usable one is already there.
    want_version="$("$initdb" --version | awk '{print $3}' | sed -E 's/^([0-9]+).*/\1/')"
    have_version="$(cat "$PG_DATA/PG_VERSION" 2>/dev/null || true)"
    if [[ -n $have_version && $have_version != "$want_version" ]]; then
        log "existing $PG_DATA is PostgreSQL $have_version, binaries are $want_version: recreating it"
        rm -rf "$PG_DATA"
        have_version=""
    fi
    if [[ -z $have_version ]]; then
        rm -rf "$PG_DATA"
        log "initialising a throwaway PostgreSQL $want_version cluster in $PG_DATA"
        as_pg "$initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C --no-sync >"$pg_dir/initdb.log" 2>&1 || {
            log "initdb failed, see $pg_dir/initdb.log:"
            tail -n 20 "$pg_dir/initdb.log" >&2
            exit 1
        }
    fi

    # A cluster left running on this data dir (another run of this script, or
    # a run that was killed hard): use it, but leave stopping it to its owner.
    if as_pg "$PG_CTL" -D "$PG_DATA" status >/dev/null 2>&1; then
        port="$(sed -n 4p "$PG_DATA/postmaster.pid")"
        log "reusing the PostgreSQL cluster already running on $PG_DATA (port $port); it will not be stopped"
        TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
        return 0
    fi

    port="${TEST_PG_PORT:-54329}"
    if [[ -z ${TEST_PG_PORT:-} ]]; then
        local tries=0
        while port_in_use "$port"; do
            port=$((port + 1))
            tries=$((tries + 1))
            if (( tries >= 50 )); then
                log "no free port found in 54329..$port; set TEST_PG_PORT"
                exit 1
            fi
        done
    elif port_in_use "$port"; then
        log "TEST_PG_PORT=$port is already in use"
        exit 1
    fi

    log "starting the throwaway PostgreSQL cluster on 127.0.0.1:$port"
    PG_STARTED=1
    as_pg "$PG_CTL" -D "$PG_DATA" -l "$pg_dir/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $sock_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || {
        log "could not start PostgreSQL, see $pg_dir/postgres.log:"
        tail -n 20 "$pg_dir/postgres.log" >&2 || true
        exit 1
    }
    TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

if [[ -n ${TEST_DATABASE_URL:-} ]]; then
    :
else
    pg_isready="$(find_pg_tool pg_isready || true)"
    if [[ ${TEST_PG_FORCE_THROWAWAY:-0} != 1 && -n $pg_isready ]] &&
        "$pg_isready" -h 127.0.0.1 -p 5432 -t 3 >/dev/null 2>&1; then
        TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    else
        start_throwaway_cluster
    fi
fi
export TEST_DATABASE_URL

# Arguments before `--` go to cargo, the rest to the test harness.
cargo_args=()
harness_args=()
while (($#)); do
    if [[ $1 == -- ]]; then
        shift
        harness_args=("$@")
        break
    fi
    cargo_args+=("$1")
    shift
done
threads_given=0
for a in "${harness_args[@]+"${harness_args[@]}"}"; do
    [[ $a == --test-threads || $a == --test-threads=* ]] && threads_given=1
done
if [[ $threads_given -eq 0 ]]; then
    harness_args=(--test-threads "${TEST_THREADS:-6}" "${harness_args[@]+"${harness_args[@]}"}")
fi

log "using PostgreSQL at $(printf '%s' "$TEST_DATABASE_URL" | sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#')"

# Tests that bound a latency (the bad-key flood's p99, the stalled-connection
# and blocked-stderr tests' answer times) measure the machine as much as the
# service when other tests share its cores. A full run (no filter given) runs
# them afterwards, one at a time, on an otherwise idle machine.
ISOLATED=(flood:: connections:: logs::a_stderr_nobody_reads)
filter_given=0
skip_next=0
for a in "${harness_args[@]}"; do
    if [[ $skip_next -eq 1 ]]; then skip_next=0; continue; fi
    case $a in
        --test-threads | --skip) skip_next=1 ;;
        -*) ;;
        *) filter_given=1 ;;
    esac
done
if [[ ${#cargo_args[@]} -eq 0 && $filter_given -eq 0 ]]; then
    skips=()
    for t in "${ISOLATED[@]}"; do skips+=(--skip "$t"); done
    cargo test --locked --all-targets -- "${harness_args[@]}" "${skips[@]}"
    log "running the latency-bound tests one at a time: ${ISOLATED[*]}"
    cargo test --locked --test api -- --test-threads 1 "${ISOLATED[@]}"
else
    cargo test --locked --all-targets "${cargo_args[@]+"${cargo_args[@]}"}" -- "${harness_args[@]}"
fi
