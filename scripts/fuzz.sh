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

# shellcheck source=scripts/lib/live_server.sh
source "$ROOT/scripts/lib/live_server.sh"

status=0
"$VENV/bin/st" --config-file "$ROOT/.ci/schemathesis.toml" run "$BASE_URL/openapi.json" \
    --header "Authorization: Bearer $KEY" \
    --max-examples "${FUZZ_MAX_EXAMPLES:-40}" \
    --seed "${FUZZ_SEED:-1}" \
    --workers 1 \
    --no-color \
    "$@" || status=$?
if grep -q '"level":"ERROR"' "$SERVER_LOG"; then
    echo "fuzz.sh: the server logged errors:" >&2
    grep '"level":"ERROR"' "$SERVER_LOG" | head -20 >&2
    status=1
fi
exit "$status"
