#!/usr/bin/env python3
"""GET /stats at scale, and what the counters cost a write (bench/stats.sh runs this).

For each store: seeds ENTRIES entries in one tenant (30 models, 90 days) by SQL
(PostgreSQL: generate_series through psql; SQLite: a recursive CTE through the
sqlite3 CLI), rebuilds the counters with the counters migration, starts the
release binary, and times GET /stats for each group_by over the last 90 days
(from/to not at midnight, so the two edge days are read from the entries)
while a light write load (creates and updates, WRITE_RATE a second) runs.
Then the write cost: sequential creates on one connection against this
binary and, if BASELINE_BIN names one (the release binary of main), against
it, in the same run, on fresh databases.
"""

import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target/release/llm-feedback"))
BASELINE_BIN = os.environ.get("BASELINE_BIN", "")
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
ENTRIES = int(os.environ.get("BENCH_ENTRIES", "1000000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "300"))
WRITE_RATE = float(os.environ.get("BENCH_WRITE_RATE", "20"))
WRITE_SECONDS = float(os.environ.get("BENCH_WRITE_SECONDS", "10"))
KEY = "lfk_bench" + os.urandom(18).hex()
MIGRATION = "migrations/{}/20261203000002_feedback_counters.sql"


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def psql(url, sql):
    subprocess.run(["psql", url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def pg_database():
    name = f"llm_feedback_stats_{int(time.time())}_{random.randrange(10**6)}"
    psql(ADMIN_URL, f"create database {name}")
    parts = urllib.parse.urlsplit(ADMIN_URL)
    return name, urllib.parse.urlunsplit(parts._replace(path="/" + name))


class Server:
    def __init__(self, url, binary=BIN, port=None):
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="stats-bench-", suffix=".log", delete=False)
        env = dict(os.environ, DATABASE_URL=url, LISTEN_ADDR=f"127.0.0.1:{self.port}",
                   BOOTSTRAP_API_KEY=KEY, BOOTSTRAP_TENANT="bench", LOG_FORMAT="json",
                   RUST_LOG="warn")
        self.process = subprocess.Popen([binary, "serve"], env=env, stdout=self.log, stderr=self.log)
        for _ in range(300):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"the server did not start; see {self.log.name}")

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {KEY}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        self.conn.request(method, path, data, headers)
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        return response.status, payload, elapsed


SEED_SELECT = """
    'bench', 'completions', 'seed-' || {g}, 'model-' || ({g} % 30),
    case {g} % 5 when 0 then null when 1 then 'thumbs_down' else 'thumbs_up' end,
    case when {g} % 4 = 0 then 'a comment' end"""


def seed_postgres(url):
    subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    psql(url, f"""
        insert into feedback (tenant, kind, output_id, model, rating, description, created_at, updated_at)
        select {SEED_SELECT.format(g='g')},
               date_trunc('milliseconds', now() - ((g / 30) % 90) * interval '1 day' - (g % 86400) * interval '1 second'),
               date_trunc('milliseconds', now() - ((g / 30) % 90) * interval '1 day' - (g % 86400) * interval '1 second')
        from generate_series(1, {ENTRIES}) g""")
    psql(url, "drop table feedback_counters")
    with open(os.path.join(ROOT, MIGRATION.format("postgres"))) as f:
        psql(url, f.read())
    psql(url, "vacuum analyze")


def seed_sqlite(path):
    url = f"sqlite://{path}"
    subprocess.run([BIN, "migrate"], env=dict(os.environ, DATABASE_URL=url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    now = int(time.time() * 1000)
    with open(os.path.join(ROOT, MIGRATION.format("sqlite"))) as f:
        migration = f.read()
    script = f"""
        pragma journal_mode = wal;
        begin;
        with recursive g(n) as (select 1 union all select n + 1 from g where n < {ENTRIES})
        insert into feedback (tenant, kind, output_id, model, rating, description, created_at, updated_at)
        select {SEED_SELECT.format(g='n')},
               {now} - ((n / 30) % 90) * 86400000 - (n % 86400) * 1000,
               {now} - ((n / 30) % 90) * 86400000 - (n % 86400) * 1000
        from g;
        drop table feedback_counters;
        {migration}
        commit;
        analyze;
    """
    subprocess.run(["sqlite3", path], input=script.encode(), check=True, stdout=subprocess.DEVNULL)
    return url


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def write_load(port, stop, counts):
    client = Client(port)
    n = 0
    while not stop.is_set():
        n += 1
        started = time.perf_counter()
        status, _, _ = client.call("POST", "/api/v1/llm/feedback/completions", {
            "id": f"live-{os.getpid()}-{n}", "rating": "thumbs_up", "model": f"model-{n % 30}"})
        counts["writes"] += status == 201
        client.call("PUT", f"/api/v1/llm/feedback/completions/live-{os.getpid()}-{n}",
                    {"rating": "thumbs_down", "description": "changed"})
        counts["writes"] += 1
        time.sleep(max(0.0, 2 / WRITE_RATE - (time.perf_counter() - started)))


def measure_reads(port, store):
    to = datetime.now(timezone.utc)
    since = to - timedelta(days=90)
    fmt = lambda at: at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    stop = threading.Event()
    counts = {"writes": 0}
    writer = threading.Thread(target=write_load, args=(port, stop, counts), daemon=True)
    writer.start()
    client = Client(port)
    rows = []
    try:
        for group_by in ["", "model", "day", "model,day"]:
            query = f"kind=completions&from={fmt(since)}&to={fmt(to)}"
            if group_by:
                query += "&group_by=" + urllib.parse.quote(group_by, safe="")
            path = f"/api/v1/llm/feedback/stats?{query}"
            for _ in range(20):  # warm-up
                client.call("GET", path)
            timings = []
            for _ in range(REQUESTS):
                status, payload, elapsed = client.call("GET", path)
                assert status == 200, payload[:200]
                timings.append(elapsed * 1000)
            groups = json.loads(payload)["groups"]
            total = sum(g["total"] for g in groups)
            rows.append((store, group_by or "(none)", len(groups), total,
                         percentile(timings, 50), percentile(timings, 99)))
    finally:
        stop.set()
        writer.join()
    return rows, counts["writes"]


def measure_writes(binary, url):
    server = Server(url, binary)
    try:
        client = Client(server.port)
        run = os.urandom(4).hex()
        for n in range(200):  # warm-up
            client.call("POST", "/api/v1/llm/feedback/completions",
                        {"id": f"warm-{run}-{n}", "rating": "thumbs_up", "model": "m"})
        timings = []
        deadline = time.perf_counter() + WRITE_SECONDS
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            status, _, elapsed = client.call("POST", "/api/v1/llm/feedback/completions", {
                "id": f"w-{run}-{n}", "rating": "thumbs_up", "description": "ok", "model": f"m{n % 30}"})
            assert status == 201
            timings.append(elapsed * 1000)
        return len(timings) / WRITE_SECONDS, percentile(timings, 50), percentile(timings, 99)
    finally:
        server.stop()


def main():
    stores = os.environ.get("BENCH_STORES", "postgres,sqlite").split(",")
    results, created = [], []
    try:
        for store in stores:
            started = time.time()
            if store == "postgres":
                name, url = pg_database()
                created.append(name)
                seed_postgres(url)
            else:
                path = os.path.join(tempfile.mkdtemp(prefix="stats-bench-"), "feedback.db")
                url = seed_sqlite(path)
            say(f"{store}: seeded {ENTRIES} entries in {time.time() - started:.0f} s")
            server = Server(url)
            try:
                rows, writes = measure_reads(server.port, store)
            finally:
                server.stop()
            results += rows
            say(f"{store}: {writes} writes during the reads")
        print(f"\nGET /stats, 90 days (edge days partial), {ENTRIES} entries, 30 models, "
              f"{REQUESTS} sequential requests per row, writes at ~{WRITE_RATE:.0f}/s meanwhile")
        print(f"{'store':10} {'group_by':10} {'groups':>7} {'total':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for store, group_by, groups, total, p50, p99 in results:
            print(f"{store:10} {group_by:10} {groups:>7} {total:>9} {p50:>8.2f} {p99:>8.2f}")
        if BASELINE_BIN:
            print(f"\nPOST (create), one connection, {WRITE_SECONDS:.0f} s each, fresh databases, "
                  "alternating binaries")
            print(f"{'store':10} {'binary':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            for store in stores:
                for label, binary in [("baseline", BASELINE_BIN), ("counters", BIN)] * 2:
                    if store == "postgres":
                        name, url = pg_database()
                        created.append(name)
                    else:
                        url = "sqlite://" + os.path.join(tempfile.mkdtemp(prefix="stats-bench-"), "w.db")
                    rate, p50, p99 = measure_writes(binary, url)
                    print(f"{store:10} {label:10} {rate:>8.0f} {p50:>8.2f} {p99:>8.2f}", flush=True)
    finally:
        for name in created:
            subprocess.run(["psql", ADMIN_URL, "-qAt", "-c", f"drop database if exists {name} with (force)"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
