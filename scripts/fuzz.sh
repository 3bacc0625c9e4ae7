#!/usr/bin/env bash
# Fuzzes the live server from its own OpenAPI document with schemathesis:
# no 5xx, every status, content type, header and body conforms to the
# document, schema-valid data is accepted, invalid data rejected.
#
# Usage: scripts/fuzz.sh [extra `st run` options]
#   FUZZ_MAX_EXAMPLES (default 40) examples per operation, FUZZ_SEED (default 1).
# Installs schemathesis (pinned) into target/schemathesis-venv on first use.
# Runs against the embedded SQLite store in a temporary directory, using the
# debug binary (built if missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
VENV="$ROOT/target/schemathesis-venv"
if [[ ! -x $VENV/bin/st ]] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "fuzz.sh: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/llm-feedback"
WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KEY="lfk_fuzz$(head -c 32 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | head -c 40)"
SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$WORK" && exec env DATABASE_URL="sqlite://$WORK/fuzz.db" LISTEN_ADDR="127.0.0.1:$PORT" \
    BOOTSTRAP_API_KEY="$KEY" RUST_LOG=warn LOG_FORMAT=json "$BIN" serve >"$WORK/server.log" 2>&1) &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

status=0
"$VENV/bin/st" --config-file "$ROOT/.ci/schemathesis.toml" run "http://127.0.0.1:$PORT/openapi.json" \
    --header "Authorization: Bearer $KEY" \
    --max-examples "${FUZZ_MAX_EXAMPLES:-40}" \
    --seed "${FUZZ_SEED:-1}" \
    --workers 1 \
    --no-color \
    "$@" || status=$?
if grep -q '"level":"ERROR"' "$WORK/server.log"; then
    echo "fuzz.sh: the server logged errors:" >&2
    grep '"level":"ERROR"' "$WORK/server.log" | head -20 >&2
    status=1
fi
exit "$status"
