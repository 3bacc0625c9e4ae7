#!/usr/bin/env bash
# What the revision row (issue 13) costs a PUT: before/after in one run.
#
#   BENCH_BASE_BIN=/path/to/llm-feedback-before bench/put_revision.sh
#
# BENCH_BASE_BIN is a release binary built from the commit before issue 13
# (e.g. `git archive 0c4168f | tar -x -C /tmp/base && (cd /tmp/base &&
# CARGO_TARGET_DIR=$PWD/target cargo build --release --bin llm-feedback)`);
# BENCH_BIN (default target/release/llm-feedback, built here) is the after.
# Installs wrk and valgrind if missing. Quick look:
#   BENCH_ROUNDS=2 BENCH_DURATION=5 BENCH_CALLGRIND_PUTS=100 bench/put_revision.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${BENCH_BASE_BIN:?set BENCH_BASE_BIN to the release binary before issue 13}"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v psql >/dev/null || missing+=(postgresql-client)
if ((${#missing[@]})); then
    sudo=""
    [[ $EUID -ne 0 ]] && sudo=sudo
    echo "put_revision.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [[ -z ${BENCH_BIN:-} ]]; then
    cargo build --release --locked --quiet --bin llm-feedback
fi
exec python3 bench/put_revision.py "$@"
