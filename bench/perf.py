#!/usr/bin/env python3
"""The performance benchmark of issue 6: the service against PostgreSQL's own
ceiling for the same statements, on one machine, in one run.

For each of POST (insert), PUT (update) and GET (select), at the same client
count, it measures:
  * pgbench running the service's exact statement (-M prepared), and
  * the release build of the service driven over HTTP by wrk,
in ROUNDS rounds that alternate which side runs first, and prints medians:
requests per second, p50/p99 latency, non-2xx count, the service's CPU time
per request (from /proc over the measured phase) and peak RSS, and the ratio
service/pgbench. Unless BENCH_BARE=0, the same HTTP load also runs against
examples/bare_handler.rs (axum + sqlx with sqlx's default pool, only the
statements: no auth, logs, metrics or limits), the yardstick the service
should beat. Then the same HTTP load against the SQLite store.

Usage: bench/perf.sh  (environment: see the constants below)
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(os.environ.get("BENCH_BIN") or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "llm-feedback")
BARE_BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "examples" / "bare_handler"
BARE = os.environ.get("BENCH_BARE", "1") != "0"
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "32"))
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ROWS = int(os.environ.get("BENCH_ROWS", "10000"))
THREADS = os.environ.get("BENCH_THREADS", "2")
SERVICE_ENV = {  # the service as it runs in production: info logs, metrics on
    "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "info"),
    "LOG_FORMAT": "json",
}
OPS = [  # (name, wrk script, pgbench script)
    ("POST", "post.lua", "insert.sql"),
    ("PUT", "put.lua", "update.sql"),
    ("GET", "get.lua", "select.sql"),
]
KEY = "lfk_bench" + secrets.token_hex(20)
WORK = Path(tempfile.mkdtemp(prefix="llm-feedback-perf-"))


def log(message):
    print(message, file=sys.stderr, flush=True)


def run(args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(name):
    parts = urllib.parse.urlsplit(ADMIN_URL)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def psql(url, sql):
    return run(["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql]).stdout.strip()


class Service:
    """The release binary on a database, with the bench key provisioned."""

    def __init__(self, url, binary=BIN):
        self.port = free_port()
        self.log = open(WORK / f"service-{self.port}.log", "w")
        env = dict(os.environ, DATABASE_URL=url, LISTEN_ADDR=f"127.0.0.1:{self.port}",
                   BOOTSTRAP_API_KEY=KEY, **SERVICE_ENV)
        if "BENCH_POOL" in os.environ:
            env["DATABASE_MAX_CONNECTIONS"] = os.environ["BENCH_POOL"]
        self.proc = subprocess.Popen([str(binary), "serve"], env=env, cwd=WORK,
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"the service did not start; see {self.log.name}")

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def wrk(service, script, seconds, run_tag):
    env = dict(os.environ, BENCH_ROWS=str(ROWS), BENCH_RUN=run_tag)
    out = run(["wrk", f"-t{THREADS}", f"-c{CLIENTS}", f"-d{seconds}s", "--latency",
               "-s", str(BENCH / script),
               "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
               f"http://127.0.0.1:{service.port}"], env=env).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "requests": total,
        "p50_ms": wrk_ms(out, "50%"),
        "p99_ms": wrk_ms(out, "99%"),
        "non_2xx": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0),
    }


def wrk_ms(out, percentile):
    value, unit = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def pgbench(url, script, seconds):
    logdir = Path(tempfile.mkdtemp(dir=WORK))
    out = run(["pgbench", "-n", "-M", "prepared", "-c", str(CLIENTS), "-j", THREADS,
               "-T", str(seconds), "-D", f"rows={ROWS}", "-f", str(BENCH / script),
               "-l", "--log-prefix", str(logdir / "tx"), url]).stdout
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
    latencies = sorted(int(line.split()[2]) for f in logdir.iterdir()
                       for line in f.read_text().splitlines())
    failed = re.search(r"number of failed transactions: (\d+)", out)
    shutil.rmtree(logdir)
    return {
        "rps": tps,
        "p50_ms": percentile(latencies, 0.50) / 1000,
        "p99_ms": percentile(latencies, 0.99) / 1000,
        "non_2xx": int(failed.group(1)) if failed else 0,
    }


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure_service(service, op, script, round_no):
    wrk(service, script, WARMUP, f"warm{round_no}{op}{secrets.token_hex(3)}")
    cpu_before = service.cpu_seconds()
    result = wrk(service, script, DURATION, f"r{round_no}{op}{secrets.token_hex(3)}")
    cpu = service.cpu_seconds() - cpu_before
    result["cpu_us"] = cpu / max(result["requests"], 1) * 1e6
    return result


def measure_pgbench(url, sql):
    pgbench(url, sql, WARMUP)
    return pgbench(url, sql, DURATION)


def preload_postgres(url):
    psql(url, f"""insert into feedback (tenant, kind, output_id, rating, description, model, created_at, updated_at)
                  select 'default', 'responses', 'pre-' || g, 'thumbs_up', 'preloaded', 'gpt-4o',
                         date_trunc('milliseconds', now()), date_trunc('milliseconds', now())
                  from generate_series(1, {ROWS}) g; analyze feedback;""")


def preload_sqlite(path):
    now = int(time.time() * 1000)
    db = sqlite3.connect(path, timeout=30)
    db.executemany(
        "insert into feedback (tenant, kind, output_id, rating, description, model, created_at, updated_at)"
        " values ('default', 'responses', ?, 'thumbs_up', 'preloaded', 'gpt-4o', ?, ?)",
        ((f"pre-{g}", now, now) for g in range(1, ROWS + 1)))
    db.commit()
    db.close()


def median(results, key):
    return statistics.median(r[key] for r in results)


def postgres_benchmark():
    settings = {name: psql(ADMIN_URL, f"show {name}") for name in ("fsync", "synchronous_commit", "max_connections")}
    log(f"PostgreSQL: {psql(ADMIN_URL, 'select version()').split(' on ')[0]}, {settings}")
    if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
        log("warning: the server does not run with default durability; figures are not comparable")
    name = f"llm_feedback_perf_{int(time.time())}_{secrets.token_hex(3)}"
    psql(ADMIN_URL, f"create database {name}")
    url = database_url(name)
    service = bare = None
    try:
        service = Service(url)  # migrates the database
        if BARE:
            bare = Service(url, BARE_BIN)
        preload_postgres(url)
        table = {}
        for op, script, sql in OPS:
            rounds = {"service": [], "pgbench": [], "bare": []}
            for round_no in range(ROUNDS):
                sides = ["pgbench", "service"] + (["bare"] if bare else [])
                sides = sides[round_no % len(sides):] + sides[:round_no % len(sides)]
                for side in sides:
                    if side == "pgbench":
                        rounds[side].append(measure_pgbench(url, sql))
                    else:
                        target = service if side == "service" else bare
                        rounds[side].append(measure_service(target, op, script, round_no))
                log(f"  {op} round {round_no + 1}: "
                    + ", ".join(f"{side} {rounds[side][-1]['rps']:.0f}/s" for side in sides))
            table[op] = (rounds["service"], rounds["pgbench"], rounds["bare"])
        return table, service.peak_rss_mib()
    finally:
        for running in (service, bare):
            if running:
                running.stop()
        psql(ADMIN_URL, f"drop database if exists {name} with (force)")


def sqlite_benchmark():
    path = WORK / "perf.db"
    service = Service(f"sqlite://{path}")
    try:
        preload_sqlite(path)
        table = {}
        for op, script, _ in OPS:
            table[op] = [measure_service(service, op, script, r) for r in range(ROUNDS)]
            rates = ", ".join(f"{r['rps']:.0f}/s" for r in table[op])
            log(f"  SQLite {op}: {rates}")
        return table, service.peak_rss_mib()
    finally:
        service.stop()


TARGETS = {  # issue 6: ratio to pgbench, CPU per request (µs)
    "POST": (0.5, 40), "PUT": (0.5, 40), "GET": (0.3, 30),
}


def report(pg_table, pg_rss, sqlite_table, sqlite_rss):
    print(f"\nPostgreSQL, {CLIENTS} clients, {DURATION}s phases after {WARMUP}s warm-up, "
          f"medians of {ROUNDS} rounds alternating which side runs first")
    header = (f"{'op':<5} {'service/s':>10} {'pgbench/s':>10} {'ratio':>6} {'target':>6} "
              f"{'svc p50':>8} {'svc p99':>8} {'pg p50':>7} {'pg p99':>7} {'p99 x':>6} "
              f"{'cpu us':>7} {'non-2xx':>8}")
    print(header)
    verdicts = []
    for op, (service_rounds, pg_rounds, _) in pg_table.items():
        svc, pg = median(service_rounds, "rps"), median(pg_rounds, "rps")
        svc_p99, pg_p99 = median(service_rounds, "p99_ms"), median(pg_rounds, "p99_ms")
        cpu = median(service_rounds, "cpu_us")
        bad = sum(r["non_2xx"] for r in service_rounds)
        ratio_target, cpu_target = TARGETS[op]
        print(f"{op:<5} {svc:>10.0f} {pg:>10.0f} {svc / pg:>6.2f} {ratio_target:>6.2f} "
              f"{median(service_rounds, 'p50_ms'):>7.2f}ms {svc_p99:>6.2f}ms "
              f"{median(pg_rounds, 'p50_ms'):>5.2f}ms {pg_p99:>5.2f}ms {svc_p99 / pg_p99:>6.2f} "
              f"{cpu:>7.1f} {bad:>8}")
        verdicts += [
            (f"{op} throughput >= {ratio_target} x pgbench", svc / pg >= ratio_target),
            (f"{op} CPU per request <= {cpu_target} us", cpu <= cpu_target),
            (f"{op} p99 <= 3 x pgbench p99", svc_p99 <= 3 * pg_p99),
            (f"{op} zero non-2xx", bad == 0),
        ]
    print(f"service peak RSS (PostgreSQL run): {pg_rss:.1f} MiB")
    if BARE:
        print("\nbare axum + sqlx handler (examples/bare_handler.rs: sqlx's default pool, "
              "only the statements), same load")
        print(f"{'op':<5} {'bare/s':>10} {'ratio':>6} {'p99':>8} {'cpu us':>7} {'non-2xx':>8} "
              f"{'service/bare':>13}")
        for op, (service_rounds, pg_rounds, bare_rounds) in pg_table.items():
            bare = median(bare_rounds, "rps")
            print(f"{op:<5} {bare:>10.0f} {bare / median(pg_rounds, 'rps'):>6.2f} "
                  f"{median(bare_rounds, 'p99_ms'):>6.2f}ms {median(bare_rounds, 'cpu_us'):>7.1f} "
                  f"{sum(r['non_2xx'] for r in bare_rounds):>8} "
                  f"{median(service_rounds, 'rps') / bare:>13.2f}")
    verdicts.append(("peak RSS < 64 MiB (PostgreSQL)", pg_rss < 64))
    print(f"\nSQLite, same HTTP load ({ROUNDS} rounds each)")
    print(f"{'op':<5} {'service/s':>10} {'p50':>8} {'p99':>8} {'cpu us':>7} {'non-2xx':>8}")
    for op, rounds in sqlite_table.items():
        bad = sum(r["non_2xx"] for r in rounds)
        print(f"{op:<5} {median(rounds, 'rps'):>10.0f} {median(rounds, 'p50_ms'):>6.2f}ms "
              f"{median(rounds, 'p99_ms'):>6.2f}ms {median(rounds, 'cpu_us'):>7.1f} {bad:>8}")
        verdicts.append((f"SQLite {op} zero non-2xx", bad == 0))
    verdicts += [
        ("SQLite POST >= 5,000/s", median(sqlite_table["POST"], "rps") >= 5000),
        ("SQLite GET >= 15,000/s", median(sqlite_table["GET"], "rps") >= 15000),
    ]
    print(f"service peak RSS (SQLite run): {sqlite_rss:.1f} MiB")
    verdicts.append(("peak RSS < 64 MiB (SQLite)", sqlite_rss < 64))
    print("\ntargets:")
    for name, ok in verdicts:
        print(f"  {'met    ' if ok else 'MISSED '} {name}")
    json.dump({"postgres": pg_table, "sqlite": sqlite_table, "rss": [pg_rss, sqlite_rss]},
              open(WORK.parent / "llm-feedback-perf-last.json", "w"), indent=1)
    return all(ok for _, ok in verdicts)


def main():
    try:
        log(f"service: {BIN}; {CLIENTS} clients, {ROUNDS} rounds of {WARMUP}s + {DURATION}s; "
            f"WORKER_THREADS={os.environ.get('WORKER_THREADS', 'default (one per CPU)')}, "
            f"DATABASE_MAX_CONNECTIONS={os.environ.get('BENCH_POOL', 'default (10)')}")
        pg_table, pg_rss = postgres_benchmark()
        sqlite_table, sqlite_rss = sqlite_benchmark()
        ok = report(pg_table, pg_rss, sqlite_table, sqlite_rss)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
