#!/usr/bin/env bash
# Drives the live service with MKA1's published Python SDK (meetkai-mka1,
# pinned) through every feedback operation it has, for both kinds: the
# contract says a client written against MKA1's documentation must work
# unchanged. Installs the SDK into target/sdk-venv on first use; runs the
# debug binary (built if missing) on the embedded SQLite store in a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SDK_VERSION=0.12.0
VENV="$ROOT/target/sdk-venv"
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/pip" show meetkai-mka1 2>/dev/null | grep -q "^Version: $SDK_VERSION$"; then
    echo "sdk_check.sh: installing meetkai-mka1 $SDK_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "meetkai-mka1==$SDK_VERSION"
fi

cargo build --locked --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/llm-feedback"
WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KEY="lfk_sdk$(head -c 32 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | head -c 40)"
SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$WORK" && exec env DATABASE_URL="sqlite://$WORK/sdk.db" LISTEN_ADDR="127.0.0.1:$PORT" \
    BOOTSTRAP_API_KEY="$KEY" RUST_LOG=warn "$BIN" serve >"$WORK/server.log" 2>&1) &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

LLM_FEEDBACK_URL="http://127.0.0.1:$PORT" LLM_FEEDBACK_KEY="$KEY" \
    "$VENV/bin/python" "$ROOT/tests/sdk/mka1_sdk_check.py"
