"""bench/webhooks.sh: webhook delivery lag at a sustained write rate, and what
the outbox and the enqueue cost a create. Everything on loopback."""

import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid

BIN = os.environ["BENCH_BIN"]
ADMIN_URL = os.environ["BENCH_ADMIN_URL"]
RATE = int(os.environ.get("BENCH_RATE", "1000"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "30"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
KEY = "lfk_bench" + uuid.uuid4().hex
API = "/api/v1/llm/feedback"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, sql):
    return subprocess.run(["psql", "-X", "-qAt", url, "-c", sql], check=True,
                          capture_output=True, text=True).stdout.split()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


class Receiver:
    """Answers 200 to every POST and records (receipt time, occurred_at), in
    a process of its own: sharing the writer's interpreter (one GIL), the
    receiver and the writer held each other back below 1,000/s."""

    def __init__(self):
        self.port = free_port()
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=receive, args=(self.port, child), daemon=True)

    async def start(self):
        self.process.start()
        if self.conn.recv() != "listening":
            raise SystemExit("the receiver did not start")

    def ask(self, command):
        self.conn.send(command)
        return self.conn.recv()

    def clear(self):
        self.ask("clear")

    def count(self):
        return self.ask("count")

    def samples(self):
        return self.ask("samples")

    def stop(self):
        self.ask("stop")
        self.process.join(5)


def receive(port, conn):
    """The receiver process: an asyncio server, and a thread answering the
    parent's commands over `conn`."""
    samples = []

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                now = time.time()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                samples.append((now, json.loads(body)["timestamp"]))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
        stopped = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def commands():
            conn.send("listening")
            while True:
                command = conn.recv()
                if command == "clear":
                    async def clear():
                        samples.clear()
                    asyncio.run_coroutine_threadsafe(clear(), loop).result()
                    conn.send(None)
                elif command == "count":
                    conn.send(len(samples))
                elif command == "samples":
                    conn.send(list(samples))
                else:
                    conn.send(None)
                    loop.call_soon_threadsafe(stopped.set_result, None)
                    return

        threading.Thread(target=commands, daemon=True).start()
        await stopped
        server.close()

    asyncio.run(serve())


def occurred(stamp):
    # 2026-12-02T07:20:00.123Z
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone \
        + int(stamp[20:23]) / 1000


class Client:
    """One keep-alive HTTP/1.1 connection to the service."""

    def __init__(self, port):
        self.port = port

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path, body):
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {API}{path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def open_loop(port, rate, seconds, prefix):
    """Creates paced at `rate` per second over CONNECTIONS connections;
    returns (sent, failed, the rate achieved)."""
    clients = [Client(port) for _ in range(CONNECTIONS)]
    for client in clients:
        await client.connect()
    queue = asyncio.Queue(maxsize=CONNECTIONS * 4)
    failed = 0

    async def worker(client):
        nonlocal failed
        while True:
            n = await queue.get()
            if n is None:
                return
            if await client.post("/completions", {"id": f"{prefix}-{n}", "rating": "thumbs_up"}) != 201:
                failed += 1

    workers = [asyncio.create_task(worker(c)) for c in clients]
    start = time.monotonic()
    total = rate * seconds
    for n in range(total):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await queue.put(n)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    took = time.monotonic() - start
    for client in clients:
        client.writer.close()
    return total, failed, total / took


async def closed_loop(port, seconds, prefix, connections=16):
    """As many creates as `connections` can make in `seconds`; latencies."""
    clients = [Client(port) for _ in range(connections)]
    for client in clients:
        await client.connect()
    latencies = []
    deadline = time.monotonic() + seconds

    async def run(client, c):
        n = 0
        while time.monotonic() < deadline:
            t = time.monotonic()
            await client.post("/completions", {"id": f"{prefix}-{c}-{n}", "rating": "thumbs_up"})
            latencies.append(time.monotonic() - t)
            n += 1

    await asyncio.gather(*(run(client, c) for c, client in enumerate(clients)))
    for client in clients:
        client.writer.close()
    return len(latencies) / seconds, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000


def start_server(url, port, delivery=True):
    env = {"WEBHOOK_DELIVERY": "true" if delivery else "false","PATH": os.environ["PATH"], "DATABASE_URL": url, "LISTEN_ADDR": f"127.0.0.1:{port}",
           "BOOTSTRAP_API_KEY": KEY, "RUST_LOG": "warn", "LOG_FORMAT": "json",
           "DATABASE_MAX_CONNECTIONS": "16", "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}
    process = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def register(port, url):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{API}/webhooks",
                                     data=json.dumps({"url": url}).encode(), method="POST")
    request.add_header("Authorization", f"Bearer {KEY}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request) as response:
        assert response.status == 201


def fresh_database():
    name = f"llm_feedback_bench_{int(time.time())}_{uuid.uuid4().hex[:6]}"
    psql(ADMIN_URL, f'create database "{name}"')
    url = urllib.parse.urlunparse(urllib.parse.urlparse(ADMIN_URL)._replace(path="/" + name))
    return name, url


async def main():
    receiver = Receiver()
    await receiver.start()
    names = []
    server = None
    try:
        # What the outbox and the enqueue cost a create: closed loop, 16
        # connections, on a replica that only enqueues (WEBHOOK_DELIVERY=false,
        # so delivery work does not share the CPU), without and then with one
        # endpoint.
        name, url = fresh_database()
        names.append(name)
        port = free_port()
        server = start_server(url, port, delivery=False)
        await closed_loop(port, 10, "warm")  # warm-up, discarded
        base = await closed_loop(port, 15, "none")
        register(port, f"http://127.0.0.1:{receiver.port}/hook")
        with_endpoint = await closed_loop(port, 15, "one")
        server.terminate()
        server.wait()
        print(f"creates, 16 connections, closed loop, no delivery worker: no endpoint "
              f"{base[0]:.0f}/s p50 {base[1]:.2f} ms p99 {base[2]:.2f} ms; one endpoint "
              f"{with_endpoint[0]:.0f}/s p50 {with_endpoint[1]:.2f} ms p99 {with_endpoint[2]:.2f} ms")

        # Delivery lag under a paced write rate, on a fresh database.
        name, url = fresh_database()
        names.append(name)
        port = free_port()
        server = start_server(url, port)
        register(port, f"http://127.0.0.1:{receiver.port}/hook")
        await closed_loop(port, 5, "warm")
        deadline = time.monotonic() + 120
        while psql(url, "select count(*) from webhook_deliveries where status = 'pending'") != ["0"]:
            if time.monotonic() > deadline:
                raise SystemExit("the warm-up deliveries did not drain")
            await asyncio.sleep(0.5)
        receiver.clear()
        sent, failed, achieved = await open_loop(port, RATE, SECONDS, "paced")
        deadline = time.monotonic() + 120
        while receiver.count() < sent - failed and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        samples = receiver.samples()
        lags = [(now - occurred(stamp)) * 1000 for now, stamp in samples]
        first, last = min(s[0] for s in samples), max(s[0] for s in samples)
        print(f"open loop: {sent} creates at {achieved:.0f}/s ({failed} failed); "
              f"{len(samples)} deliveries at {len(samples) / (last - first):.0f}/s; "
              f"lag p50 {percentile(lags, 50):.0f} ms, p99 {percentile(lags, 99):.0f} ms, "
              f"max {max(lags):.0f} ms")
    finally:
        if server:
            server.terminate()
            server.wait()
        receiver.stop()
        for name in names:
            psql(ADMIN_URL, f'drop database if exists "{name}" with (force)')


asyncio.run(main())
