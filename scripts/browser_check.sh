#!/usr/bin/env bash
# The browser widget (GET /widget.js) in real headless Chromium: Debian's
# `chromium` package (installed with apt when /usr/bin/chromium is missing)
# driven by Playwright for Python, with axe-core injected into the pages.
# Starts the debug binary on loopback (SQLite in a temp dir, a bootstrap key,
# CORS_ALLOWED_ORIGINS naming the test page's origin), serves the test pages
# from two other loopback ports (one allowed, one not) and runs
# tests/browser/*.py. Playwright and pytest go into target/browser-venv,
# axe-core into target/browser-npm (pinned, on first use; no browser is
# downloaded). Screenshots land in docs/widget.png, docs/widget-themed.png,
# docs/dashboard.png and docs/dashboard-empty.png. The dashboard tests get the
# server's database URL and binary (LLM_FEEDBACK_DATABASE_URL, LLM_FEEDBACK_BIN)
# to seed entries over several days and to make keys.
# Bounded: pytest gets BROWSER_CHECK_TIMEOUT_SECS (default 300) and every
# wait inside a test 10 s.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PLAYWRIGHT_VERSION=1.65.2
PYTEST_VERSION=9.2.0
AXE_VERSION=4.14.1
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
VENV="$ROOT/target/browser-venv"
NPM_DIR="$ROOT/target/browser-npm"
AXE_JS="$NPM_DIR/node_modules/axe-core/axe.min.js"

SUDO=""
if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if [[ ! -x $CHROMIUM ]]; then
    echo "browser_check.sh: no $CHROMIUM; installing chromium with apt-get" >&2
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
"$CHROMIUM" --version 2>/dev/null || true

if ! command -v npm >/dev/null 2>&1; then
    echo "browser_check.sh: no npm; installing it with apt-get (for axe-core)" >&2
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y npm
fi

if ! [[ -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c \
    'import sys; from importlib.metadata import version as v; sys.exit(not (v("playwright") == sys.argv[1] and v("pytest") == sys.argv[2]))' \
    "$PLAYWRIGHT_VERSION" "$PYTEST_VERSION" 2>/dev/null; then
    echo "browser_check.sh: installing playwright $PLAYWRIGHT_VERSION and pytest $PYTEST_VERSION into $VENV" >&2
    python3 -m venv --clear "$VENV"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "playwright==$PLAYWRIGHT_VERSION" "pytest==$PYTEST_VERSION"
fi

if ! grep -qs "\"version\": \"$AXE_VERSION\"" "$NPM_DIR/node_modules/axe-core/package.json"; then
    echo "browser_check.sh: installing axe-core $AXE_VERSION into $NPM_DIR" >&2
    npm install --silent --no-audit --no-fund --prefix "$NPM_DIR" "axe-core@$AXE_VERSION"
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
BROWSER_PAGE_PORT="$(free_port)"
BROWSER_OTHER_PORT="$(free_port)"
while [[ $BROWSER_OTHER_PORT == "$BROWSER_PAGE_PORT" ]]; do BROWSER_OTHER_PORT="$(free_port)"; done

# The service allows the page origin only; live_server.sh passes the
# environment on and sets BASE_URL and KEY.
export CORS_ALLOWED_ORIGINS="http://127.0.0.1:$BROWSER_PAGE_PORT"
# shellcheck source=scripts/lib/live_server.sh
source "$ROOT/scripts/lib/live_server.sh"
curl -fs "$BASE_URL/healthz" >/dev/null || { echo "browser_check.sh: the server did not start" >&2; cat "$SERVER_LOG" >&2; exit 1; }

mkdir -p "$ROOT/docs"
status=0
LLM_FEEDBACK_URL="$BASE_URL" LLM_FEEDBACK_KEY="$KEY" \
    LLM_FEEDBACK_DATABASE_URL="sqlite://$LIVE_WORK/live.db" LLM_FEEDBACK_BIN="$LIVE_BIN" CHROMIUM="$CHROMIUM" AXE_JS="$AXE_JS" \
    BROWSER_PAGE_PORT="$BROWSER_PAGE_PORT" BROWSER_OTHER_PORT="$BROWSER_OTHER_PORT" \
    SCREENSHOT_DIR="$ROOT/docs" PYTHONDONTWRITEBYTECODE=1 \
    timeout --kill-after=10 "${BROWSER_CHECK_TIMEOUT_SECS:-300}" \
    "$VENV/bin/python" -m pytest -p no:cacheprovider -v -s "$ROOT/tests/browser" "$@" || status=$?
if [[ $status -ne 0 ]]; then
    echo "browser_check.sh: FAILED (exit $status); the server's log:" >&2
    tail -n 50 "$SERVER_LOG" >&2
    exit "$status"
fi
echo "browser_check.sh: passed"
