#!/usr/bin/env bash
# The admin export against real readers and a real S3 server: installs
# pyarrow, moto[server] and boto3 (pinned) into target/export-venv on first
# use, starts moto's S3 server on loopback, then runs the service twice, once
# with EXPORT_LOCATION=s3://BUCKET/PREFIX (AWS_ENDPOINT_URL pointing at moto)
# and once with a local directory; each time tests/export/export_check.py
# creates entries, runs an export with an admin key (`keys create --admin`)
# and reads both Parquet files back with pyarrow (from the bucket through
# boto3 for S3), row for row against the API's list. Bounded in time (each
# step has a timeout); stops everything it started on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/target/export-venv"
PINS=("pyarrow==26.0.1" "moto[server]==5.2.5" "boto3==1.44.5")
if ! "$VENV/bin/python" -c 'import pyarrow, moto, boto3, sys
sys.exit(pyarrow.__version__ != "26.0.1" or moto.__version__ != "5.2.5")' 2>/dev/null; then
    echo "export_check.sh: installing ${PINS[*]} into $VENV" >&2
    python3 -m venv --clear "$VENV"
    timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
fi

cargo build --locked --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/llm-feedback"
WORK="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MOTO_PID="" SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [[ -n $MOTO_PID ]] && kill -TERM "$MOTO_PID" 2>/dev/null && wait "$MOTO_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for URL: until it answers, for at most 20 s.
wait_for() {
    for _ in $(seq 200); do
        curl -fs -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "export_check.sh: $1 did not answer within 20 s" >&2
    return 1
}

MOTO_PORT="$(free_port)"
S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
BUCKET="feedback-exports"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
wait_for "$S3_ENDPOINT/moto-api/"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
timeout 30 "$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$S3_ENDPOINT', region_name='us-east-1').create_bucket(Bucket='$BUCKET')"

# run_check MODE LOCATION: a fresh server exporting to LOCATION, checked.
run_check() {
    local mode=$1 location=$2 dir="$WORK/$1" port
    mkdir -p "$dir"
    port="$(free_port)"
    local db="sqlite://$dir/feedback.db" key_a key_b admin
    key_a="$(DATABASE_URL="$db" "$BIN" keys create --tenant tenant-a 2>/dev/null)"
    key_b="$(DATABASE_URL="$db" "$BIN" keys create --tenant tenant-b 2>/dev/null)"
    admin="$(DATABASE_URL="$db" "$BIN" keys create --admin --name export-check 2>/dev/null)"
    (cd "$dir" && exec env DATABASE_URL="$db" LISTEN_ADDR="127.0.0.1:$port" EXPORT_LOCATION="$location" \
        AWS_ENDPOINT_URL="$S3_ENDPOINT" RUST_LOG=warn LOG_FORMAT=json "$BIN" serve >"$dir/server.log" 2>&1) &
    SERVER_PID=$!
    wait_for "http://127.0.0.1:$port/healthz"
    local status=0
    LLM_FEEDBACK_URL="http://127.0.0.1:$port" ADMIN_KEY="$admin" EXPORT_MODE="$mode" \
        TENANT_KEYS="{\"tenant-a\": \"$key_a\", \"tenant-b\": \"$key_b\"}" \
        S3_ENDPOINT="$S3_ENDPOINT" S3_BUCKET="$BUCKET" \
        timeout 300 "$VENV/bin/python" "$ROOT/tests/export/export_check.py" || status=$?
    kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    if [[ $status -ne 0 ]]; then
        echo "export_check.sh: $mode FAILED; the server's log:" >&2
        tail -n 20 "$dir/server.log" >&2
        return "$status"
    fi
}

run_check s3 "s3://$BUCKET/exports/check"
run_check local "$WORK/local/exports"
echo "export_check.sh: passed (s3 through moto, and a local directory)"
