#!/usr/bin/env bash
# Issue 14's "Done when" for webhooks, against real processes on loopback:
# two replicas of the debug binary on one fresh PostgreSQL database, and a
# Python receiver that verifies every delivery with the Standard Webhooks
# reference library (`standardwebhooks` from PyPI, in target/webhook-check-venv).
#
#   1. 2,000 writes from 16 concurrent clients across both replicas: every
#      change delivered, none to two attempts at once, each signature
#      verifies; events whose first two attempts the receiver fails arrive
#      again on WEBHOOK_RETRY_SCHEDULE (1s,2s,4s here).
#   2. A replica SIGKILLed while deliveries are pending: after a restart,
#      every committed change is delivered.
#
# Usage: scripts/webhook_check.sh   (PostgreSQL: TEST_DATABASE_URL, else
# postgres://postgres@127.0.0.1:5432/postgres). Bounded: every wait has a
# deadline; the database is dropped at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/target/webhook-check-venv"
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
    echo "webhook_check.sh: installing standardwebhooks into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==1.1.0"
fi

cargo build --locked --quiet
export LLM_FEEDBACK_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/llm-feedback"
export ADMIN_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
exec "$VENV/bin/python" "$ROOT/tests/webhooks/check.py" "$@"
