#!/usr/bin/env bash
# Drives the live service with MKA1's published Python SDK (meetkai-mka1)
# through every feedback operation it has, for both kinds, once with each
# pinned release: the contract says a client written against MKA1's
# documentation must work unchanged, with 0.12.0 (camelCase timestamps) and
# with the latest release (snake_case timestamps). Each release is installed
# from PyPI into its own venv, target/sdk-venv-VERSION, on first use; each
# runs against a fresh debug binary (built if missing) on the embedded SQLite
# store in a temp dir. Runs every version, then exits non-zero if any failed.
# With the latest release, tests/sdk/idempotent_retry.py also shows a create
# whose answer a proxy drops, retried by the SDK: 201 with Idempotency-Key.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SDK_VERSIONS=(0.12.0 0.12.128)

# Installs meetkai-mka1 VERSION into its venv unless it is already there.
install_sdk() {
    local version=$1 venv="$ROOT/target/sdk-venv-$1"
    if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c \
        'import sys; from importlib.metadata import version; sys.exit(version("meetkai-mka1") != sys.argv[1])' \
        "$version" 2>/dev/null; then
        return
    fi
    echo "sdk_check.sh: installing meetkai-mka1 $version into $venv" >&2
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "meetkai-mka1==$version"
}

# Runs the checks with meetkai-mka1 VERSION against a server of its own.
check_sdk() {
    local version=$1
    install_sdk "$version"
    # shellcheck source=scripts/lib/live_server.sh
    source "$ROOT/scripts/lib/live_server.sh"
    # An admin key for the admin export, made as an operator would.
    local admin_key
    admin_key="$(DATABASE_URL="sqlite://$LIVE_WORK/live.db" "$LIVE_BIN" keys create --admin --name sdk-check 2>/dev/null)"
    LLM_FEEDBACK_URL="$BASE_URL" LLM_FEEDBACK_KEY="$KEY" LLM_FEEDBACK_ADMIN_KEY="$admin_key" \
        "$ROOT/target/sdk-venv-$version/bin/python" "$ROOT/tests/sdk/mka1_sdk_check.py"
    # A create whose answer is lost, retried by the SDK (issue 13): the
    # latest release, whose calls take `http_headers=`.
    if [[ $version == "${SDK_VERSIONS[-1]}" ]]; then
        LLM_FEEDBACK_URL="$BASE_URL" LLM_FEEDBACK_KEY="$KEY" \
            "$ROOT/target/sdk-venv-$version/bin/python" "$ROOT/tests/sdk/idempotent_retry.py"
    fi
}

failed=()
for version in "${SDK_VERSIONS[@]}"; do
    echo "sdk_check.sh: checking meetkai-mka1 $version"
    # A subshell per version: its own server (live_server.sh stops it on the
    # subshell's exit) and `set -e` in force inside, whatever the outcome.
    set +e
    (set -e; check_sdk "$version")
    status=$?
    set -e
    if [[ $status -eq 0 ]]; then
        echo "sdk_check.sh: meetkai-mka1 $version passed"
    else
        echo "sdk_check.sh: meetkai-mka1 $version FAILED (exit $status)" >&2
        failed+=("$version")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "sdk_check.sh: failed with meetkai-mka1 ${failed[*]}" >&2
    exit 1
fi
echo "sdk_check.sh: passed with meetkai-mka1 ${SDK_VERSIONS[*]}"
