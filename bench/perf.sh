#!/usr/bin/env bash
# The performance benchmark: the service vs PostgreSQL's own ceiling for the
# same statements (pgbench), then the same HTTP load on SQLite.
# One command from a clean checkout: installs wrk/pgbench if missing, builds
# the release binary, runs bench/perf.py. Takes about 8 minutes.
#
#   bench/perf.sh                 # PostgreSQL at BENCH_ADMIN_URL (default: postgres@127.0.0.1:5432)
#   BENCH_ROUNDS=1 BENCH_DURATION=5 bench/perf.sh    # a quick look
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v pgbench >/dev/null || [[ -x $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)/pgbench ]] || missing+=(postgresql-contrib)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    sudo=""
    [[ $EUID -ne 0 ]] && sudo=sudo
    echo "perf.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# pgbench lives beside the server binaries on Debian.
PATH="$PATH:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
export PATH

cargo build --release --locked --quiet --bin llm-feedback --example bare_handler
exec python3 bench/perf.py "$@"
