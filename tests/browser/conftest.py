"""Fixtures of the browser check (run by scripts/browser_check.sh).

The script starts the service on loopback (SQLite, a bootstrap key,
CORS_ALLOWED_ORIGINS naming the page origin) and passes in:
LLM_FEEDBACK_URL, LLM_FEEDBACK_KEY, BROWSER_PAGE_PORT (the allowed origin),
BROWSER_OTHER_PORT (an origin CORS does not name), CHROMIUM, AXE_JS and
SCREENSHOT_DIR. Pages are served from memory by a small HTTP server per
origin; the browser is the system's Chromium, headless.
"""

import html
import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import sync_playwright

BASE_URL = os.environ["LLM_FEEDBACK_URL"]
API_KEY = os.environ["LLM_FEEDBACK_KEY"]
API = BASE_URL + "/api/v1/llm/feedback"
# Every wait in a test is bounded by this (milliseconds).
TIMEOUT_MS = 10_000


def api(method, path, body=None, token=API_KEY):
    """`method API/path` with `token` (the tenant API key by default): (status, JSON or None)."""
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(API + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, (json.loads(raw) if raw else None)


def stored(kind, output_id):
    """The entry as the service stores it, read with the API key; None when there is none."""
    status, body = api("GET", f"/{kind}/{urllib.request.quote(output_id, safe='')}")
    assert status in (200, 404), (status, body)
    return body if status == 200 else None


def mint_token(kind, output_id):
    """The credential a page gets for one output: a feedback token minted by
    `POST /tokens` with the tenant API key (the one place the check mints)."""
    status, body = api("POST", "/tokens", {"kind": kind, "id": output_id})
    assert status == 201, (status, body)
    token = body["token"]
    assert token.startswith("lft_"), body
    return token


def new_id(kind="responses"):
    prefix = "resp" if kind == "responses" else "chatcmpl"
    return f"{prefix}-browser-{uuid.uuid4().hex[:12]}"


PAGE_SCRIPT = """
window.changes = []; window.expired = []; window.nextToken = null;
document.addEventListener('llm-feedback-change', (e) => changes.push(e.detail));
document.addEventListener('llm-feedback-token-expired', (e) => {
  expired.push(e.detail);
  if (window.nextToken) e.target.setAttribute('token', window.nextToken);
});
"""


def widget_page(attributes, *, style="", title="An answer"):
    """A page embedding one <llm-feedback> with `attributes` (None: left out)."""
    attrs = " ".join(
        f'{name}="{html.escape(value)}"' for name, value in attributes.items() if value is not None
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llm-feedback widget</title>
<style>
body {{ font-family: sans-serif; margin: 0; padding: 16px; background: #f6f8fa; }}
.card {{ background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px; width: 360px; }}
.card p {{ margin: 0 0 12px; color: #1f2328; }}
{style}
</style>
<script>{PAGE_SCRIPT}</script>
<script type="module" src="{BASE_URL}/widget.js"></script>
</head>
<body>
<main>
<h1>{html.escape(title)}</h1>
<div class="card">
<p>Paris is the capital of France.</p>
<llm-feedback {attrs}></llm-feedback>
</div>
</main>
</body>
</html>
"""


class PageServer:
    """Serves registered pages from memory on 127.0.0.1:port (one origin)."""

    def __init__(self, port):
        pages = self.pages = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                page = pages.get(self.path)
                body = (page or "not found").encode()
                self.send_response(200 if page else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.origin = f"http://127.0.0.1:{port}"
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, page_html):
        """Registers a page; returns its URL."""
        path = f"/{uuid.uuid4().hex}.html"
        self.pages[path] = page_html
        return self.origin + path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def pages():
    server = PageServer(int(os.environ["BROWSER_PAGE_PORT"]))
    yield server
    server.close()


@pytest.fixture(scope="session")
def other_pages():
    server = PageServer(int(os.environ["BROWSER_OTHER_PORT"]))
    yield server
    server.close()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    """A fresh page; `page.warnings` collects its console warnings."""
    context = browser.new_context(viewport={"width": 800, "height": 600}, device_scale_factor=2)
    context.set_default_timeout(TIMEOUT_MS)
    new_page = context.new_page()
    new_page.warnings = []
    new_page.on(
        "console", lambda message: message.type == "warning" and new_page.warnings.append(message.text)
    )
    yield new_page
    context.close()
