#!/usr/bin/env bash
# Generated clients against the live service: fetches /openapi.json from the
# debug binary (on SQLite, as scripts/lib/live_server.sh starts it), then
#   1. lints it with Redocly CLI's `recommended` ruleset (0 errors);
#   2. generates TypeScript types (openapi-typescript) for openapi-fetch,
#      typechecks tests/clients/ts/driver.ts with `tsc --noEmit --strict`,
#      compiles it and runs it against the service;
#   3. generates a Python client (openapi-python-client --fail-on-warning),
#      runs `mypy --strict` on its models/ and on tests/clients/python/
#      driver.py (which passes one Kind, Order, Rating to every operation),
#      and runs the driver against the service;
#   4. fails if either client holds an enum more than once.
# Exits non-zero on the first failure.
#
# Tools are pinned: npm packages by tests/clients/ts/package.json and its
# package-lock.json (installed with `npm ci` under target/clients-npm),
# Python ones by tests/clients/python/requirements.txt (target/clients-venv).
# Both are installed on first use and again when the pins change. Output:
# target/clients/ (document, generated code, compiled driver).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STARTED=$SECONDS
stage() { printf 'clients_check.sh: [%3ds] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }

NPM="$ROOT/target/clients-npm"
VENV="$ROOT/target/clients-venv"
OUT="$ROOT/target/clients"
PINS_TS="$ROOT/tests/clients/ts"
PINS_PY="$ROOT/tests/clients/python/requirements.txt"

# Redocly CLI 2 needs Node.js 20.19 or later (22.12+ also works).
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
    echo "clients_check.sh: needs Node.js >= 20.19 with npm on PATH (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi
if ! cmp -s "$PINS_TS/package-lock.json" "$NPM/.installed-lock.json" || [[ ! -x $NPM/node_modules/.bin/tsc ]]; then
    stage "installing the pinned npm tools into $NPM"
    mkdir -p "$NPM"
    cp "$PINS_TS/package.json" "$PINS_TS/package-lock.json" "$NPM/"
    npm ci --prefix "$NPM" --no-audit --no-fund --loglevel=error >&2
    cp "$PINS_TS/package-lock.json" "$NPM/.installed-lock.json"
fi
if ! cmp -s "$PINS_PY" "$VENV/.installed-requirements.txt" || [[ ! -x $VENV/bin/openapi-python-client ]]; then
    stage "installing the pinned Python tools into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PINS_PY"
    cp "$PINS_PY" "$VENV/.installed-requirements.txt"
fi
# openapi-python-client runs ruff on what it generates: from the venv.
export PATH="$VENV/bin:$NPM/node_modules/.bin:$PATH"
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true

# shellcheck source=scripts/lib/live_server.sh
source "$ROOT/scripts/lib/live_server.sh"
rm -rf "$OUT"
mkdir -p "$OUT"
DOCUMENT="$OUT/openapi.json"
curl -fsS "$BASE_URL/openapi.json" -o "$DOCUMENT"
# One tenant per driver, so that each sees only its own entries.
tenant_key() {
    DATABASE_URL="sqlite://$LIVE_WORK/live.db" RUST_LOG=warn "$LIVE_BIN" keys create --tenant "$1" --name clients_check 2>/dev/null
}
TS_KEY="$(tenant_key clients-ts)"
PY_KEY="$(tenant_key clients-python)"

stage "redocly lint (recommended ruleset)"
redocly lint --extends=recommended --format=stylish "$DOCUMENT" 2>&1 |
    grep -v -e '^\s*$' -e '[║╔╚]' >&2

stage "TypeScript: openapi-typescript, tsc --noEmit --strict, the driver"
# Under $NPM so that both tsc and node find node_modules.
TS_OUT="$NPM/driver"
rm -rf "$TS_OUT"
mkdir -p "$TS_OUT"
cp "$PINS_TS/driver.ts" "$PINS_TS/tsconfig.json" "$TS_OUT/"
printf '{"private": true, "type": "module"}\n' >"$TS_OUT/package.json"
openapi-typescript "$DOCUMENT" --output "$TS_OUT/schema.d.ts" >&2
tsc --project "$TS_OUT" --noEmit --strict
tsc --project "$TS_OUT"
cp "$TS_OUT/schema.d.ts" "$OUT/schema.d.ts"
LLM_FEEDBACK_URL="$BASE_URL" LLM_FEEDBACK_KEY="$TS_KEY" node "$TS_OUT/out/driver.js"

stage "Python: openapi-python-client --fail-on-warning, mypy --strict, the driver"
PY_OUT="$OUT/python"
openapi-python-client generate --path "$DOCUMENT" --output-path "$PY_OUT/llm_feedback_client" \
    --config "$ROOT/tests/clients/python/config.yaml" --meta none --fail-on-warning --overwrite >&2
# Errors are reported for the named modules only: models/, then the driver;
# the generated client.py is the generator's own template.
(cd "$PY_OUT" && mypy --strict --no-incremental --follow-imports=silent -p llm_feedback_client.models)
MYPYPATH="$PY_OUT" mypy --strict --no-incremental --follow-imports=silent "$ROOT/tests/clients/python/driver.py"
LLM_FEEDBACK_URL="$BASE_URL" LLM_FEEDBACK_KEY="$PY_KEY" PYTHONPATH="$PY_OUT" \
    python "$ROOT/tests/clients/python/driver.py"

stage "no enum generated twice"
python "$ROOT/tests/clients/enum_duplicates.py" --ts "$OUT/schema.d.ts" --python "$PY_OUT/llm_feedback_client/models"

if grep -q '"level":"ERROR"' "$SERVER_LOG"; then
    echo "clients_check.sh: the server logged errors:" >&2
    grep '"level":"ERROR"' "$SERVER_LOG" | head -20 >&2
    exit 1
fi
stage "passed"
