# shellcheck shell=bash
# Sourced by scripts/fuzz.sh and scripts/sdk_check.sh: builds the debug binary
# and starts it on the embedded SQLite store in a temporary directory with a
# fresh bootstrap key. Sets BASE_URL and KEY; stops the server and removes the
# directory on exit.

cargo build --locked --quiet
LIVE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/llm-feedback"
LIVE_WORK="$(mktemp -d)"
LIVE_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KEY="lfk_live$(head -c 32 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | head -c 40)"
BASE_URL="http://127.0.0.1:$LIVE_PORT"
SERVER_LOG="$LIVE_WORK/server.log"
LIVE_PID=""
stop_live_server() {
    [[ -n $LIVE_PID ]] && kill -TERM "$LIVE_PID" 2>/dev/null && wait "$LIVE_PID" 2>/dev/null
    rm -rf "$LIVE_WORK"
}
trap stop_live_server EXIT

(cd "$LIVE_WORK" && exec env DATABASE_URL="sqlite://$LIVE_WORK/live.db" LISTEN_ADDR="127.0.0.1:$LIVE_PORT" \
    BOOTSTRAP_API_KEY="$KEY" RUST_LOG=warn LOG_FORMAT=json "$LIVE_BIN" serve >"$SERVER_LOG" 2>&1) &
LIVE_PID=$!
for _ in $(seq 100); do
    curl -fs "$BASE_URL/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
