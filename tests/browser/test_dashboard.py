"""The built-in dashboard (GET /dashboard) in headless Chromium.

Entries spread over days cannot be made through the API (it sets createdAt),
so they are written straight into the server's SQLite file for a tenant of
their own ("dash"), with that tenant's counters, in one transaction; keys for
"dash" and for an empty tenant are made with `llm-feedback keys create`, as an
operator would. Every figure the page shows is checked against GET /stats.
"""

import csv
import io
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import BASE_URL, TIMEOUT_MS

DATABASE_URL = os.environ["LLM_FEEDBACK_DATABASE_URL"]
BINARY = os.environ["LLM_FEEDBACK_BIN"]
DASHBOARD = BASE_URL + "/dashboard"
DAY_MS = 86_400_000
XSS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>"]
MODELS = ["gpt-4o", "claude-3", None]


def make_key(tenant):
    out = subprocess.run(
        [BINARY, "keys", "create", "--tenant", tenant, "--name", "browser check"],
        env=dict(os.environ, DATABASE_URL=DATABASE_URL, RUST_LOG="error"),
        check=True, capture_output=True, text=True, timeout=60,
    )
    return out.stdout.strip()


def call(path, key):
    request = urllib.request.Request(BASE_URL + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def stats(key, kind, query=""):
    return call(f"/api/v1/llm/feedback/stats?kind={kind}{query}", key)["groups"]


def listing(key, kind):
    """Every entry of a kind, newest first, through the list API."""
    items, after = [], None
    while True:
        path = f"/api/v1/llm/feedback/{kind}?limit=100" + (f"&after={urllib.request.quote(after)}" if after else "")
        page = call(path, key)
        items += [dict(item, kind=kind) for item in page["data"]]
        if not page["has_more"]:
            return items
        after = page["last_id"]


@pytest.fixture(scope="module")
def seeded():
    """Tenant "dash": 150 entries over the last 12 days; two of the newest
    carry the XSS descriptions. Returns its key."""
    key = make_key("dash")
    path = DATABASE_URL.removeprefix("sqlite://")
    now = int(time.time() * 1000)
    rows = []
    for i in range(150):
        kind = "responses" if i % 3 == 0 else "completions"
        rating = [None, "thumbs_up", "thumbs_up", "thumbs_down"][i % 4]
        description = f"comment number {i}, a bit of text" if i % 5 == 0 else None
        if i < 2:
            description, kind = XSS[i], "completions"
        # Newest first by i; distinct instants; every day of the last 12 has some.
        created = now - 60_000 - i * (12 * DAY_MS // 160)
        rows.append(("dash", kind, f"dash-{i:03d}", rating, description, MODELS[i % 3], created, created))
    db = sqlite3.connect(path, timeout=10)
    with db:
        db.executemany(
            "insert into feedback (tenant, kind, output_id, rating, description, model, created_at, updated_at)"
            " values (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        # The counters, as the migration's backfill builds them.
        db.execute(
            """insert into feedback_counters
                 (tenant, kind, model, day, total, thumbs_up, thumbs_down, unrated, with_description)
               select tenant, kind, coalesce(model, ''), created_at / 86400000, count(*),
                      count(case when rating = 'thumbs_up' then 1 end),
                      count(case when rating = 'thumbs_down' then 1 end),
                      count(*) - count(rating), count(description)
               from feedback where tenant = 'dash' group by 1, 2, 3, 4"""
        )
    db.close()
    return key


def watch(page):
    """Collects console errors and uncaught exceptions of the page."""
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("response", lambda response: response.status >= 400 and page.errors.append(f"{response.status} {response.url}"))
    page.on("pageerror", lambda error: page.errors.append(str(error)))


def open_with_key(page, key):
    watch(page)
    page.goto(DASHBOARD)
    field = page.get_by_label("API key")
    field.fill(key)
    field.press("Enter")
    page.wait_for_function("() => !document.body.hasAttribute('aria-busy')", timeout=TIMEOUT_MS)


def settle(page):
    page.wait_for_timeout(50)
    page.wait_for_function("() => !document.body.hasAttribute('aria-busy')", timeout=TIMEOUT_MS)


def totals_shown(page):
    rows = {}
    for row in page.locator("#totals tbody tr[data-model]").all():
        model = row.get_attribute("data-model")
        rows[model] = {
            field: row.locator(f"[data-field={field}]").inner_text()
            for field in ["total", "thumbs_up", "thumbs_down", "unrated", "with_description", "satisfaction", "ci95"]
        }
    return rows


def wilson(up, n):
    z = 1.959964
    p = up / n
    centre = p + z * z / (2 * n)
    spread = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def expected_totals(key, kinds):
    """/stats per model over all time, summed over `kinds`, as the page formats it."""
    sums = {}
    for kind in kinds:
        for group in stats(key, kind, "&group_by=model"):
            into = sums.setdefault(group["model"], dict.fromkeys(
                ["total", "thumbs_up", "thumbs_down", "unrated", "with_description"], 0))
            for field in into:
                into[field] += group[field]
    shown = {}
    for model, counts in sums.items():
        rated = counts["thumbs_up"] + counts["thumbs_down"]
        row = {field: str(value) for field, value in counts.items()}
        pct = lambda value: f"{value * 100:.1f} %"
        row["satisfaction"] = pct(counts["thumbs_up"] / rated) if rated else "–"
        low, high = wilson(counts["thumbs_up"], rated) if rated else (None, None)
        row["ci95"] = f"{pct(low)} – {pct(high)}" if rated else "–"
        shown[model] = row
    return shown


def test_served_with_a_strict_policy_and_nosniff():
    for path in ["/dashboard", "/dashboard/app.js", "/dashboard/app.css"]:
        with urllib.request.urlopen(BASE_URL + path, timeout=10) as response:
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy
            assert "unsafe-inline" not in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_numbers_match_stats_and_filters_page_and_export_work(page, seeded):
    open_with_key(page, seeded)
    # Both kinds until filtered: the totals are the sums of the two kinds.
    assert totals_shown(page) == expected_totals(seeded, ["completions", "responses"])
    assert page.locator("figure.chart").count() == 3
    assert page.locator("figure.chart svg .band").count() == 3
    # The key is in session storage only, never in the URL.
    assert page.evaluate("() => sessionStorage.length") == 1
    assert seeded not in page.url

    # The newest entries, both kinds merged newest first, 20 a page.
    everything = sorted(listing(seeded, "completions") + listing(seeded, "responses"),
                        key=lambda item: item["created_at"], reverse=True)
    shown = page.locator("#entries li[data-id]")
    assert [li.get_attribute("data-id") for li in shown.all()] == [e["id"] for e in everything[:20]]
    page.get_by_role("button", name="Older").click()
    settle(page)
    assert [li.get_attribute("data-id") for li in shown.all()] == [e["id"] for e in everything[20:40]]
    assert page.locator("#page-label").inner_text() == "Page 2"
    page.get_by_role("button", name="Newer").click()
    assert [li.get_attribute("data-id") for li in shown.all()] == [e["id"] for e in everything[:20]]

    # Kind filter: totals of that kind alone.
    page.get_by_label("Kind", exact=True).select_option("responses")
    settle(page)
    assert totals_shown(page) == expected_totals(seeded, ["responses"])
    assert {li.get_attribute("data-kind") for li in shown.all()} == {"responses"}

    # Rating, model and comment filters on the entries.
    page.get_by_label("Kind", exact=True).select_option("")
    page.get_by_label("Rating", exact=True).select_option("thumbs_down")
    settle(page)
    wanted = [e for e in everything if e.get("rating") == "thumbs_down"]
    assert [li.get_attribute("data-id") for li in shown.all()] == [e["id"] for e in wanted[:20]]
    page.get_by_label("Rating", exact=True).select_option("")
    page.get_by_label("Model", exact=True).select_option("claude-3")
    page.get_by_label("Comment", exact=True).select_option("with")
    settle(page)
    wanted = [e for e in everything if e["model"] == "claude-3" and "description" in e]
    assert wanted, "the seed has commented claude-3 entries"
    assert [li.get_attribute("data-id") for li in shown.all()] == [e["id"] for e in wanted[:20]]
    assert list(totals_shown(page)) == ["claude-3"]
    page.get_by_label("Comment", exact=True).select_option("without")
    settle(page)
    wanted = [e for e in everything if e["model"] == "claude-3" and "description" not in e]
    assert [li.get_attribute("data-id") for li in shown.all()] == [e["id"] for e in wanted[:20]]

    # The export: fetched with the key, downloaded as a file.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export completions (CSV)").click()
    download = download_info.value
    assert download.suggested_filename.startswith("feedback-completions")
    rows = list(csv.reader(io.StringIO(open(download.path(), encoding="utf-8").read())))
    assert rows[0] == ["id", "model", "rating", "description", "user", "created_at", "updated_at"]
    assert sorted(r[0] for r in rows[1:]) == sorted(e["id"] for e in everything if e["kind"] == "completions")
    assert page.errors == []


def test_hostile_descriptions_show_as_text_and_run_nothing(page, seeded):
    open_with_key(page, seeded)
    for index, text in enumerate(XSS):
        comment = page.locator(f"#entries li[data-id='dash-{index:03d}'] .comment")
        assert comment.inner_text() == text
    assert page.locator("#entries img, #entries script").count() == 0
    assert page.evaluate("() => window.__xss") is None
    assert page.errors == []


def test_a_wrong_key_shows_the_401_message_and_asks_again(page, seeded):
    open_with_key(page, "lfk_" + "0" * 40)
    message = page.locator("#key-message")
    message.wait_for(state="visible")
    assert "401" in message.inner_text()
    assert page.get_by_label("API key").is_visible()
    assert page.evaluate("() => sessionStorage.length") == 0
    assert "lfk_" not in page.url
    # Then the right key opens it.
    field = page.get_by_label("API key")
    field.fill(seeded)
    field.press("Enter")
    settle(page)
    assert page.locator("#board").is_visible()


def test_503_shows_a_retry_message(page, seeded):
    page.route("**/api/v1/llm/feedback/stats*", lambda route: route.fulfill(
        status=503, content_type="application/json",
        body=json.dumps({"error": {"code": "unavailable", "message": "database unavailable"}})))
    open_with_key(page, seeded)
    text = page.locator("#board-message").inner_text()
    assert "503" in text and "Refresh" in text
    page.unroute("**/api/v1/llm/feedback/stats*")
    page.get_by_role("button", name="Refresh").click()
    settle(page)
    assert totals_shown(page) == expected_totals(seeded, ["completions", "responses"])


def axe_violations(page):
    page.add_script_tag(path=os.environ["AXE_JS"])
    return page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
             .map(v => ({id: v.id, help: v.help, nodes: v.nodes.map(n => n.target)}))"""
    )


def test_axe_finds_no_violation_and_screenshots_are_saved(browser, seeded):
    # axe is injected as a script: only this context bypasses the page's CSP.
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(DASHBOARD)
        assert axe_violations(page) == []
        open_with_key(page, seeded)
        assert axe_violations(page) == []
        shots = os.environ.get("SCREENSHOT_DIR")
        if shots:
            page.screenshot(path=os.path.join(shots, "dashboard.png"), full_page=True)
        page.get_by_role("button", name="Forget key").click()
        open_with_key(page, make_key(f"empty-{uuid.uuid4().hex[:8]}"))
        assert "No feedback" in page.locator("#totals").inner_text()
        assert "No entries" in page.locator("#entries").inner_text()
        assert axe_violations(page) == []
        if shots:
            page.screenshot(path=os.path.join(shots, "dashboard-empty.png"), full_page=True)
    finally:
        context.close()
