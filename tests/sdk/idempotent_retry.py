"""A create whose answer is lost, retried by MKA1's SDK, with and without
an Idempotency-Key (issue 13).

MKA1's SDK retries a POST on connection errors by default. Between the SDK
and the service sits a local TCP proxy that forwards the first create, lets
the service answer it (the entry is committed), then resets the client's
connection instead of passing the answer on: the SDK sees a connection
error and sends the create again on a new connection, which the proxy
passes through.

- With `http_headers={"Idempotency-Key": ...}` the retry is answered with
  the kept `201` (Idempotent-Replayed): the SDK returns the entry.
- Without it the retry is a second create of the same id: `409`, although
  the feedback was saved (the problem the header solves).

Run by scripts/sdk_check.sh (meetkai-mka1 0.12.128) with LLM_FEEDBACK_URL
and LLM_FEEDBACK_KEY.
"""

import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid

from mka1 import SDK

URL = os.environ["LLM_FEEDBACK_URL"]
KEY = os.environ["LLM_FEEDBACK_KEY"]
RUN = uuid.uuid4().hex[:8]
failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        failures.append(what)


class DroppingProxy:
    """Forwards connections to the service; the answer on the first
    connection after `arm()` is swallowed and the client reset (RST)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = False
        self.dropped = 0
        self.connections = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def arm(self):
        with self.lock:
            self.armed = True

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            with self.lock:
                self.connections += 1
                drop, self.armed = self.armed, False
            threading.Thread(target=self.serve, args=(client, drop), daemon=True).start()

    def serve(self, client, drop):
        server = socket.create_connection(self.upstream)

        def forward_requests():
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    server.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=forward_requests, daemon=True).start()
        try:
            if drop:
                # Wait for the service's answer (the create has committed),
                # read it all, then reset the client without passing it on.
                answer = server.recv(65536)
                time.sleep(0.2)
                server.setblocking(False)
                try:
                    while server.recv(65536):
                        pass
                except OSError:
                    pass
                with self.lock:
                    self.dropped += 1 if answer else 0
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                server.close()
                return
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, server):
                try:
                    sock.close()
                except OSError:
                    pass


def raw_status(kind, entry_id):
    request = urllib.request.Request(
        f"{URL}/api/v1/llm/feedback/{kind}/{urllib.parse.quote(entry_id, safe='')}",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, None


parsed = urllib.parse.urlsplit(URL)
proxy = DroppingProxy((parsed.hostname, parsed.port))


def fresh_client():
    # A client of its own: its first request opens a new connection, the
    # one the armed proxy drops the answer on.
    return SDK(bearer_auth=KEY, server_url=f"http://127.0.0.1:{proxy.port}").llm.feedback


# With an Idempotency-Key: the retry gets the kept 201.
entry_id = f"sdk-retry-{RUN}-keyed"
feedback = fresh_client()
proxy.arm()
try:
    created = feedback.create_response_feedback(
        id=entry_id,
        rating="thumbs_up",
        http_headers={"Idempotency-Key": f"retry-{RUN}"},
    )
    check(created.id == entry_id, "with Idempotency-Key: the retried create returns the entry (201)")
except Exception as err:  # noqa: BLE001 - any failure is the finding
    check(False, f"with Idempotency-Key: the retried create raised {type(err).__name__}: {err}")
check(proxy.dropped == 1, f"the proxy dropped the first answer ({proxy.dropped} dropped)")
check(proxy.connections >= 2, f"the SDK retried on a new connection ({proxy.connections} connections)")
status, stored = raw_status("responses", entry_id)
check(status == 200 and stored["rating"] == "thumbs_up", "with Idempotency-Key: one entry, as created")

# Without: the same lost answer makes the retry a 409.
entry_id = f"sdk-retry-{RUN}-bare"
dropped_before = proxy.dropped
feedback = fresh_client()
proxy.arm()
try:
    feedback.create_response_feedback(id=entry_id, rating="thumbs_down")
    check(False, "without Idempotency-Key: the retried create was expected to fail with 409")
except Exception as err:  # noqa: BLE001
    check("409" in str(err), f"without Idempotency-Key: the retry is 409 ({type(err).__name__})")
check(proxy.dropped == dropped_before + 1, "the proxy dropped the first answer again")
status, _ = raw_status("responses", entry_id)
check(status == 200, "without Idempotency-Key: the entry was saved all the same")

if failures:
    print(f"{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
print("idempotent retry: all checks passed")
