"""What the revision row (issue 13) costs a PUT: the same PUT load against
two binaries, BENCH_BASE_BIN (before: no revision row, no revision counter)
and BENCH_BIN (after), in one run, rounds alternating which goes first, on
PostgreSQL and on SQLite; then instructions per PUT under callgrind.

Throughput on this shared 2-core machine moves with the other tenants'
load, so the figures to quote are the ratios within one run, CPU time per
request (utime + stime of the service over the measured phase) and, least
noisy, callgrind's instruction counts per request (the service process
only: on PostgreSQL the database's own work is not in them; on SQLite it is,
since the database runs in-process).

Run by bench/put_revision.sh; knobs as bench/perf.py's (BENCH_ROUNDS,
BENCH_DURATION, BENCH_WARMUP, BENCH_CLIENTS, BENCH_ROWS) and
BENCH_CALLGRIND_PUTS (default 300; 0 skips callgrind).
"""

import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402  (the shared service, wrk and preload helpers)

BASE_BIN = Path(os.environ["BENCH_BASE_BIN"])
NEW_BIN = perf.BIN
CALLGRIND_PUTS = int(os.environ.get("BENCH_CALLGRIND_PUTS", "300"))


def put_rounds(url, preload, label):
    sides = {"before": BASE_BIN, "after": NEW_BIN}
    results = {side: [] for side in sides}
    for round_no in range(perf.ROUNDS):
        order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
        for side in order:
            database = url()
            service = perf.Service(database["url"], sides[side])
            try:
                preload(database)
                results[side].append(perf.measure_service(service, "PUT", "put.lua", round_no))
            finally:
                service.stop()
                database["drop"]()
        perf.log(f"  {label} round {round_no + 1}: "
                 + ", ".join(f"{side} {results[side][-1]['rps']:.0f}/s "
                             f"{results[side][-1]['cpu_us']:.1f} µs CPU" for side in order))
    return results


def postgres_database():
    name = f"llm_feedback_putrev_{int(time.time())}_{secrets.token_hex(3)}"
    perf.psql(perf.ADMIN_URL, f"create database {name}")
    url = perf.database_url(name)
    return {"url": url, "preload": lambda: perf.preload_postgres(url),
            "drop": lambda: perf.psql(perf.ADMIN_URL, f"drop database if exists {name} with (force)")}


def sqlite_database():
    path = perf.WORK / f"putrev-{secrets.token_hex(3)}.db"
    def drop():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {"url": f"sqlite://{path}", "preload": lambda: perf.preload_sqlite(path), "drop": drop}


def instructions_per_put(binary, database, puts):
    """Callgrind's instruction count of `puts` more PUTs, per PUT: the
    difference between a run of 2*puts and one of puts, so that start-up and
    shutdown cancel out."""
    totals = []
    for count in (puts, 2 * puts):
        db = database()
        port = perf.free_port()
        out = perf.WORK / f"callgrind-{secrets.token_hex(3)}.out"
        env = dict(os.environ, DATABASE_URL=db["url"], LISTEN_ADDR=f"127.0.0.1:{port}",
                   BOOTSTRAP_API_KEY=perf.KEY, RUST_LOG="info", LOG_FORMAT="json",
                   WORKER_THREADS="1")
        log = open(perf.WORK / f"callgrind-{port}.log", "w")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                 str(binary), "serve"], env=env, cwd=perf.WORK, stdout=log, stderr=log)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit(f"the service did not start under valgrind; see {log.name}")
                    time.sleep(0.5)
            db["preload"]()
            for n in range(count):
                body = b'{"rating":"thumbs_down"}' if n % 2 else b'{"description":"Could be more detailed."}'
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/v1/llm/feedback/responses/pre-{n % perf.ROWS + 1}",
                    data=body, method="PUT",
                    headers={"Authorization": f"Bearer {perf.KEY}", "Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=60) as response:
                    assert response.status == 200
        finally:
            proc.send_signal(perf.signal.SIGTERM)
            proc.wait(timeout=300)
            log.close()
            db["drop"]()
        summary = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
        totals.append(int(summary.group(1)))
    return (totals[1] - totals[0]) / puts


def report(label, results):
    before, after = results["before"], results["after"]
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    print(f"\n{label}: PUT, {perf.CLIENTS} clients, median of {perf.ROUNDS} rounds")
    print(f"{'':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11} {'non-2xx':>8}")
    for side, rows in (("before", before), ("after", after)):
        print(f"{side:8} {med(rows, 'rps'):9.0f} {med(rows, 'p50_ms'):8.2f} {med(rows, 'p99_ms'):8.2f} "
              f"{med(rows, 'cpu_us'):11.1f} {sum(r['non_2xx'] for r in rows):8d}")
    print(f"after/before: throughput {med(after, 'rps') / med(before, 'rps'):.2f}, "
          f"CPU per request {med(after, 'cpu_us') / med(before, 'cpu_us'):.2f}")


def main():
    try:
        perf.log(f"before: {BASE_BIN}; after: {NEW_BIN}")
        for label, factory in (("PostgreSQL", postgres_database), ("SQLite", sqlite_database)):
            results = put_rounds(factory, lambda db: db["preload"](), label)
            report(label, results)
        if CALLGRIND_PUTS:
            print(f"\ncallgrind: instructions per PUT (service process, {CALLGRIND_PUTS} vs "
                  f"{2 * CALLGRIND_PUTS} sequential PUTs, WORKER_THREADS=1)")
            for label, factory in (("PostgreSQL", postgres_database), ("SQLite", sqlite_database)):
                before = instructions_per_put(BASE_BIN, factory, CALLGRIND_PUTS)
                after = instructions_per_put(NEW_BIN, factory, CALLGRIND_PUTS)
                print(f"{label:10} before {before:,.0f}  after {after:,.0f}  after/before {after / before:.2f}")
    finally:
        perf.shutil.rmtree(perf.WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
