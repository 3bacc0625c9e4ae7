#!/usr/bin/env bash
# The admin export (POST /export) of 1,000,000 entries: how long it takes
# (< 60 s), the service's peak RSS growth during it (< 100 MiB; VmHWM of
# /proc/PID/status, reset with clear_refs just before the export), and the
# p99 of GET /completions?limit=20 (wrk, 4 connections) while it runs vs on
# the idle service (within 2x). PostgreSQL, then SQLite (BENCH_STORES to
# choose), release build, one run each; the service, the database and the
# load all run on this machine, so the figures move with whatever else runs.
#
# On PostgreSQL it also takes the p99 while pgbench (at nice 19) runs the
# export's page queries at about its pace (BENCH_DB_PAGES_PER_SEC, 200): the
# database's share of the interference, which the service cannot lower.
# And the server's CPU time by thread during the export and the load.
#
# Usage: bench/export.sh   (BENCH_ADMIN_URL another PostgreSQL; BENCH_ROWS;
#                           BENCH_STORES="postgres sqlite"; BENCH_WRK_DELAY_MS
#                           for a paced load; BENCH_SERVER_ENV="EXPORT_NICE=0 ...")
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROWS="${BENCH_ROWS:-1000000}"
STORES="${BENCH_STORES:-postgres sqlite}"
DURATION="${BENCH_DURATION:-5s}"
# BENCH_WRK_DELAY_MS: each connection waits this long after each answer
# (wrk's delay() hook), so the API load is a steady rate well below the
# machine's capacity instead of a closed loop that saturates it.
WRK_DELAY_MS="${BENCH_WRK_DELAY_MS:-}"
# BENCH_SERVER_ENV: extra VAR=VALUE settings for the service, space-separated.
read -r -a SERVER_ENV <<<"${BENCH_SERVER_ENV:-}"

# ROWS entries over 10 tenants, both kinds, every field set or unset in turn.
PG_BULK_SQL="insert into feedback (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
select 'tenant-' || (g % 10), case when g % 2 = 0 then 'completions' else 'responses' end, 'bulk-' || g,
       case when g % 3 = 0 then 'user-' || (g % 100) end,
       case g % 3 when 1 then 'thumbs_up' when 2 then 'thumbs_down' end,
       case when g % 4 = 0 then 'benchmark row ' || g || ', with a comma and \"quotes\"' end,
       case when g % 5 <> 0 then 'gpt-4o' end, t, t
from generate_series(1, $ROWS) g,
     lateral (select date_trunc('milliseconds', now()) - make_interval(secs => ($ROWS - g) / 1000.0) as t) ts"

sqlite_bulk() {
    python3 - "$1" "$ROWS" <<'PY'
import sqlite3, sys, time
path, rows = sys.argv[1], int(sys.argv[2])
now = int(time.time() * 1000)
db = sqlite3.connect(path, timeout=30)
db.executemany(
    "insert into feedback (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)"
    " values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ((f"tenant-{g % 10}", "completions" if g % 2 == 0 else "responses", f"bulk-{g}",
      f"user-{g % 100}" if g % 3 == 0 else None,
      {1: "thumbs_up", 2: "thumbs_down"}.get(g % 3),
      f'benchmark row {g}, with a comma and "quotes"' if g % 4 == 0 else None,
      "gpt-4o" if g % 5 else None, now - (rows - g), now - (rows - g))
     for g in range(1, rows + 1)))
db.commit()
PY
}

# "p99-ms requests/s" of GET /completions?limit=20 for DURATION at 4 connections.
p99_ms() {
    local script=()
    if [[ -n $WRK_DELAY_MS ]]; then
        printf 'function delay() return %s end\n' "$WRK_DELAY_MS" >"$WORK_DIR/delay.lua"
        script=(-s "$WORK_DIR/delay.lua")
    fi
    wrk -t2 -c4 -d"$DURATION" --latency "${script[@]}" -H "Authorization: Bearer $BENCH_KEY" "$1" |
        awk '/^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p=v}
             /^Requests\/sec/ {r=$2} END {printf "%.2f %.0f\n", p, r}'
}

# The server's threads' CPU time: "tid|name|ticks" lines (utime + stime,
# from /proc/PID/task/*/stat; comm may hold spaces and parentheses).
thread_ticks() {
    for t in /proc/"$SERVER_PID"/task/*; do
        sed -E "s/^([0-9]+) \((.*)\) [A-Za-z] (.*)$/\1|\2|\3/" "$t/stat" 2>/dev/null
    done | awk -F'|' '{split($3, f, " "); print $1 "|" $2 "|" f[12] + f[13]}'
}

# cpu_by_thread BEFORE SAMPLES: CPU seconds per thread name between the
# BEFORE snapshot and the highest figure of each thread in SAMPLES (a thread
# that ended, such as the export's encoder, keeps its last sample).
cpu_by_thread() {
    awk -F'|' -v tick="$(getconf CLK_TCK)" 'FNR == NR {before[$1] = $3; next}
        {name[$1] = $2; if ($3 > last[$1]) last[$1] = $3}
        END {for (t in last) cpu[name[t]] += last[t] - before[t]
             for (n in cpu) if (cpu[n] / tick >= 0.01) printf "%s %.2f s, ", n, cpu[n] / tick}' "$1" "$2"
}

# ratio A B: A / B to two decimals.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'
}

status_json() {
    curl -fs -H "Authorization: Bearer $ADMIN_KEY" "http://127.0.0.1:$1/api/v1/llm/feedback/export/status"
}

bench_store() {
    local store="$1" url="$2" port="$3"
    start_server "$url" "$port" EXPORT_LOCATION="$WORK_DIR/exports-$store" "${SERVER_ENV[@]}"
    say "$store: inserting $ROWS entries"
    if [[ $store == postgres ]]; then
        psql "$url" -qAt -c "$PG_BULK_SQL" >/dev/null
        psql "$url" -qAt -c "analyze feedback" >/dev/null
    else
        sqlite_bulk "${url#sqlite://}"
    fi
    ADMIN_KEY="$(DATABASE_URL="$url" "$BIN" keys create --admin --name bench 2>/dev/null)"
    local api="http://127.0.0.1:$port/api/v1/llm/feedback"
    local idle_p99 idle_rps
    read -r idle_p99 idle_rps < <(p99_ms "$api/completions?limit=20")
    # The database's share alone: the export's page queries, from pgbench
    # (at nice 19) at about the export's pace, while the same load runs.
    local db_p99="-" db_rps="-"
    if [[ $store == postgres ]] && command -v pgbench >/dev/null; then
        # The page size of the service's default (EXPORT_BATCH_ROWS).
        local page_rows=1000
        local pages=$((ROWS / page_rows))
        cat >"$WORK_DIR/page.sql" <<SQL
\\set p random(0, $((pages - 1)))
select seq, tenant, kind, output_id, model, rating, description, end_user, created_at, updated_at
from feedback where seq > :p * $page_rows and seq <= $ROWS order by seq limit $page_rows;
SQL
        nice -n 19 pgbench -n -c1 -R "${BENCH_DB_PAGES_PER_SEC:-200}" -T "${DURATION%s}" -f "$WORK_DIR/page.sql" "$url" \
            >"$WORK_DIR/pgbench.log" 2>&1 &
        local pgbench=$!
        read -r db_p99 db_rps < <(p99_ms "$api/completions?limit=20")
        wait "$pgbench" || true
    fi
    local rss_before
    rss_before="$(rss_kib)"
    echo 5 >"/proc/$SERVER_PID/clear_refs" # resets VmHWM to the current RSS
    thread_ticks >"$WORK_DIR/cpu-before"
    : >"$WORK_DIR/cpu-samples"
    (while kill -0 "$SERVER_PID" 2>/dev/null; do thread_ticks >>"$WORK_DIR/cpu-samples"; sleep 0.1; done) &
    local sampler=$!
    local started
    started="$(date +%s%N)"
    curl -fs -X POST -H "Authorization: Bearer $ADMIN_KEY" "$api/export" >/dev/null
    # Load during the export: DURATION (5 s) from the POST, within the export.
    local busy_p99 busy_rps
    read -r busy_p99 busy_rps < <(p99_ms "$api/completions?limit=20")
    local body
    while body="$(status_json "$port")" && [[ $body == *'"RUNNING"'* ]]; do
        sleep 0.2
        if (($(date +%s%N) - started > 300000000000)); then say "$store: export still running after 300 s"; break; fi
    done
    local wall_ms=$((($(date +%s%N) - started) / 1000000))
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    local peak
    peak="$(peak_rss_kib)"
    local growth_mib
    growth_mib="$(awk -v a="$peak" -v b="$rss_before" 'BEGIN {printf "%.1f", (a - b) / 1024}')"
    local duration_ms records bytes
    duration_ms="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("result",{}).get("duration_ms","-"))' "$body")"
    records="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("result",{}).get("record_count","-"))' "$body")"
    bytes="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("progress",{}).get("parquet_bytes","-"))' "$body")"
    printf '%-8s rows=%s status=%s export=%s ms (wall %s ms) parquet=%s bytes rss_before=%s KiB peak_growth=%s MiB p99_idle=%s ms (%s req/s) p99_during=%s ms (%s req/s) ratio=%s\n' \
        "$store" "$records" "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$body")" \
        "$duration_ms" "$wall_ms" "$bytes" "$rss_before" "$growth_mib" "$idle_p99" "$idle_rps" "$busy_p99" "$busy_rps" "$(ratio "$busy_p99" "$idle_p99")"
    if [[ $db_p99 != - ]]; then
        printf '%-8s p99 while pgbench runs the export'"'"'s page queries at %s/s instead: %s ms (%s req/s), ratio %s\n' "$store" \
            "${BENCH_DB_PAGES_PER_SEC:-200}" "$db_p99" "$db_rps" "$(ratio "$db_p99" "$idle_p99")"
    fi
    printf '%-8s server CPU during the export and the load, by thread: %s\n' "$store" \
        "$(cpu_by_thread "$WORK_DIR/cpu-before" "$WORK_DIR/cpu-samples")"
    stop_server
}

ensure_tools
build_release
say "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
port=18440
for store in $STORES; do
    case $store in
        postgres) bench_store postgres "$(fresh_pg_database)" "$port" ;;
        sqlite) bench_store sqlite "sqlite://$WORK_DIR/bench.db" "$port" ;;
    esac
    port=$((port + 1))
done
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
