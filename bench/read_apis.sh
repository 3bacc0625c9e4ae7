#!/usr/bin/env bash
# Read APIs: listing the last page of 100,000 entries vs the first page
# (keyset pagination: the cost of a page must not depend on its depth), and
# a 50,000-row CSV export with the server's peak memory. On PostgreSQL and
# on SQLite, release build, one run.
#
# Usage: bench/read_apis.sh      (BENCH_ADMIN_URL to use another PostgreSQL)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROWS=100000
DURATION="${BENCH_DURATION:-5s}"

# Inserts ROWS entries for the bench key's tenant, 1 ms apart, oldest first:
# bulk-1 is the oldest, bulk-$ROWS the newest.
PG_BULK_SQL="insert into feedback (tenant, kind, output_id, rating, description, model, created_at, updated_at)
select 'default', 'completions', 'bulk-' || g,
       case when g % 2 = 0 then 'thumbs_up' else 'thumbs_down' end,
       'benchmark row ' || g || ', with a comma and \"quotes\"', 'gpt-4o', t, t
from generate_series(1, $ROWS) g,
     lateral (select date_trunc('milliseconds', now()) - make_interval(secs => ($ROWS - g) / 1000.0) as t) ts"

sqlite_bulk() {
    python3 - "$1" "$ROWS" <<'PY'
import sqlite3, sys, time
path, rows = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
db = sqlite3.connect(path, timeout=30)
db.executemany(
    "insert into feedback (tenant, kind, output_id, rating, description, model, created_at, updated_at)"
    " values ('default', 'completions', ?, ?, ?, 'gpt-4o', ?, ?)",
    ((f"bulk-{g}", "thumbs_up" if g % 2 == 0 else "thumbs_down",
      f'benchmark row {g}, with a comma and "quotes"', now - (rows - g), now - (rows - g))
     for g in range(1, rows + 1)))
db.commit()
PY
}

# wrk_line URL: "requests/s p50 p99" for a fixed URL at 4 connections.
wrk_line() {
    wrk -t2 -c4 -d"$DURATION" --latency -H "Authorization: Bearer $BENCH_KEY" "$1" |
        awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
             END {printf "%s %s %s %s\n", rps, p50, p99, (bad==""?0:bad)}'
}

bench_store() {
    local store="$1" url="$2" port="$3"
    start_server "$url" "$port" EXPORT_MAX_ROWS=50000
    if [[ $store == postgres ]]; then
        psql "$url" -qAt -c "$PG_BULK_SQL" >/dev/null
        psql "$url" -qAt -c "analyze feedback" >/dev/null
    else
        sqlite_bulk "${url#sqlite://}"
    fi
    local api="http://127.0.0.1:$port/api/v1/llm/feedback"
    # Newest first. The first page needs no cursor; the second and the last
    # (bulk-100 .. bulk-1, after bulk-101) both resolve a cursor, at depth
    # 100 and 99,900: equal cost means the depth does not matter.
    read -r first_rps first_p50 first_p99 first_bad < <(wrk_line "$api/completions?limit=100")
    read -r second_rps second_p50 second_p99 second_bad < <(wrk_line "$api/completions?limit=100&after=bulk-$((ROWS - 99))")
    read -r last_rps last_p50 last_p99 last_bad < <(wrk_line "$api/completions?limit=100&after=bulk-101")
    local before_peak export
    before_peak=$(peak_rss_kib)
    export=$(curl -s -o "$WORK_DIR/export.csv" -w '%{http_code} %{time_total} %{size_download}' \
        -D "$WORK_DIR/export.headers" -H "Authorization: Bearer $BENCH_KEY" "$api/export/completions")
    local data_rows=$(($(wc -l <"$WORK_DIR/export.csv") - 1))
    local truncated
    truncated=$(grep -ci '^x-export-truncated: true' "$WORK_DIR/export.headers" || true)
    printf '%-9s list first page: %8s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$store" "$first_rps" "$first_p50" "$first_p99" "$first_bad"
    printf '%-9s list second page:%8s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$store" "$second_rps" "$second_p50" "$second_p99" "$second_bad"
    printf '%-9s list last page:  %8s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$store" "$last_rps" "$last_p50" "$last_p99" "$last_bad"
    python3 -c "import sys; s, a, b, c = sys.argv[1], *map(float, sys.argv[2:]); print(f'{s:<9} throughput ratios: last/first {c/a:.2f}, last/second {c/b:.2f}')" "$store" "$first_rps" "$second_rps" "$last_rps"
    read -r code secs bytes <<<"$export"
    printf '%-9s export: HTTP %s, %s data rows, truncated header: %s, %s bytes in %ss\n' "$store" "$code" "$data_rows" "$truncated" "$bytes" "$secs"
    local after_first
    after_first=$(peak_rss_kib)
    # A second export: a streamed export's memory is bounded, so the peak
    # must not climb again.
    curl -s -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "$api/export/completions"
    printf '%-9s server peak RSS: %s KiB before the export, %s KiB after it, %s KiB after a second one\n' "$store" "$before_peak" "$after_first" "$(peak_rss_kib)"
    stop_server
}

ensure_tools
build_release
say "PostgreSQL: $ROWS rows"
bench_store postgres "$(fresh_pg_database)" 18081
say "SQLite: $ROWS rows"
bench_store sqlite "sqlite://$WORK_DIR/bench.db" 18082
