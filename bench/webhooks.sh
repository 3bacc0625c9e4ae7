#!/usr/bin/env bash
# Webhook delivery under a sustained 1,000 writes/s (issue 14): one release
# replica on a fresh PostgreSQL database, a local receiver (asyncio, raw
# HTTP/1.1, keep-alive), and an open-loop writer pacing creates at
# BENCH_RATE per second for BENCH_SECONDS. Reports the delivery rate and the
# delivery lag (receipt time minus the change's `occurred_at`) p50/p99, and
# what the outbox and the enqueue cost a create: closed-loop create latency
# and throughput with no endpoint registered (outbox row only, the enqueue
# inserts nothing) and with one (outbox row, delivery row, NOTIFY).
#
#   bench/webhooks.sh                  # 1,000/s for 30 s
#   BENCH_RATE=500 BENCH_SECONDS=10 bench/webhooks.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v psql >/dev/null || { say "webhooks.sh needs psql (postgresql-client)"; exit 1; }
[[ -n ${BENCH_BIN:-} ]] || build_release
export BENCH_BIN="${BENCH_BIN:-$BIN}" BENCH_ADMIN_URL="$ADMIN_URL"
python3 bench/webhooks.py "$@"
