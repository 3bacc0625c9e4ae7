#!/usr/bin/env bash
# GET /stats with 1,000,000 entries in one tenant (30 models, 90 days), both
# stores, while writes continue; and, with BASELINE_BIN, what the counters
# cost a create (the same sequential POSTs against main's release binary and
# this one, alternating, in one run). See bench/stats.py for the knobs.
#
#   bench/stats.sh
#   BASELINE_BIN=/path/to/main/llm-feedback bench/stats.sh
#   BENCH_ENTRIES=100000 BENCH_STORES=sqlite bench/stats.sh     # a quick look
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    sudo=""
    [[ $EUID -ne 0 ]] && sudo=sudo
    echo "stats.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo build --release --locked --quiet --bin llm-feedback
exec python3 bench/stats.py "$@"
