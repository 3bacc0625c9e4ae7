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

# shellcheck source=scripts/lib/live_server.sh
source "$ROOT/scripts/lib/live_server.sh"

LLM_FEEDBACK_URL="$BASE_URL" LLM_FEEDBACK_KEY="$KEY" \
    "$VENV/bin/python" "$ROOT/tests/sdk/mka1_sdk_check.py"
