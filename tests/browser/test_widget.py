"""<llm-feedback> in real headless Chromium, clicked and typed into as a user
would, against the live service; after each action the stored entry is read
back through the API with the tenant key. See scripts/browser_check.sh."""

import gzip
import json
import os
import time
import urllib.request
import uuid

import pytest
from playwright.sync_api import expect

from conftest import API, BASE_URL, TIMEOUT_MS, api, mint_token, new_id, stored, widget_page

expect.set_options(timeout=TIMEOUT_MS)

UP, DOWN = "Good response", "Bad response"


def open_widget(page, pages, kind="responses", output_id=None, style="", **attributes):
    """Opens a page with one widget for a new output; returns the output id.
    Keyword attributes use `_` for `-` (`label_up` is `label-up`)."""
    output_id = output_id or new_id(kind)
    attrs = {"endpoint": BASE_URL, "kind": kind, "output-id": output_id, "token": mint_token(kind, output_id)}
    attrs.update({name.replace("_", "-"): value for name, value in attributes.items()})
    page.goto(pages.add(widget_page(attrs, style=style)))
    return output_id


def widget(page):
    return page.locator("llm-feedback")


def thumb(page, name):
    return widget(page).get_by_role("button", name=name, exact=True)


def wait_for_changes(page, count):
    """Waits until `count` llm-feedback-change events fired; returns their details."""
    page.wait_for_function("n => window.changes.length >= n", arg=count)
    return page.evaluate("window.changes")


def set_attribute(page, name, value):
    widget(page).evaluate("(el, [n, v]) => el.setAttribute(n, v)", [name, value])


def focused(page):
    """The accessible name (or text) of the element focused inside the widget."""
    return page.evaluate(
        """() => { const a = document.querySelector('llm-feedback').shadowRoot.activeElement;
                   return a ? (a.getAttribute('aria-label') || a.textContent || a.tagName) : null; }"""
    )


def fail_with_503(page, method, pages):
    """Holds the next `method` request to the API; returns the held routes.
    A held route is answered 503 by `answer_503`; every other request goes on."""
    held = []

    def handle(route):
        if route.request.method == method and not held:
            held.append(route)
        else:
            route.continue_()

    page.route(API + "/**", handle)
    return held


def answer_503(page, held, pages):
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not held:
        assert time.monotonic() < deadline, "the request never came"
        page.wait_for_timeout(20)
    held[0].fulfill(
        status=503,
        content_type="application/json",
        headers={"Access-Control-Allow-Origin": pages.origin},
        body=json.dumps({"error": {"code": "unavailable", "message": "overloaded"}}),
    )


def axe_violations(page):
    page.add_script_tag(path=os.environ["AXE_JS"])
    return page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
             .map(v => ({id: v.id, help: v.help, nodes: v.nodes.map(n => n.target)}))"""
    )


def test_first_vote_creates_the_other_thumb_switches_the_active_one_clears(page, pages):
    output_id = open_widget(page, pages)
    up, down = thumb(page, UP), thumb(page, DOWN)
    expect(up).to_be_visible()
    expect(up).to_have_attribute("aria-pressed", "false")
    assert stored("responses", output_id) is None

    up.click()
    changes = wait_for_changes(page, 1)
    assert changes[-1] == {"kind": "responses", "id": output_id, "rating": "thumbs_up", "description": None}
    assert stored("responses", output_id)["rating"] == "thumbs_up"
    expect(up).to_have_attribute("aria-pressed", "true")

    down.click()
    assert wait_for_changes(page, 2)[-1]["rating"] == "thumbs_down"
    assert stored("responses", output_id)["rating"] == "thumbs_down"
    expect(up).to_have_attribute("aria-pressed", "false")
    expect(down).to_have_attribute("aria-pressed", "true")

    down.click()
    assert wait_for_changes(page, 3)[-1]["rating"] is None
    assert "rating" not in stored("responses", output_id)
    expect(down).to_have_attribute("aria-pressed", "false")


def test_the_stored_state_is_shown_on_load(page, pages):
    output_id = new_id("completions")
    status, _ = api(
        "POST", "/completions", {"id": output_id, "rating": "thumbs_down", "description": "Too vague."}
    )
    assert status == 201
    open_widget(page, pages, kind="completions", output_id=output_id)

    expect(thumb(page, DOWN)).to_have_attribute("aria-pressed", "true")
    expect(thumb(page, UP)).to_have_attribute("aria-pressed", "false")
    expect(widget(page).get_by_role("textbox")).to_have_value("Too vague.")

    thumb(page, UP).click()
    wait_for_changes(page, 1)
    entry = stored("completions", output_id)
    assert (entry["rating"], entry["description"]) == ("thumbs_up", "Too vague.")


def test_a_comment_on_thumbs_down_with_a_live_counter(page, pages):
    output_id = open_widget(page, pages)
    box = widget(page).get_by_role("textbox", name="What could be better?")
    send = widget(page).get_by_role("button", name="Send", exact=True)
    counter = widget(page).locator(".counter")
    expect(thumb(page, UP)).to_be_visible()
    expect(box).to_be_hidden()

    thumb(page, DOWN).click()
    wait_for_changes(page, 1)
    expect(box).to_be_visible()
    box.press_sequentially("Wrong city.")
    expect(counter).to_have_text("11/2000")
    box.fill("a" * 2001)
    expect(counter).to_have_text("2001/2000")
    expect(send).to_be_disabled()
    # The limit counts Unicode scalar values, as the service does.
    box.fill("\U0001f600" * 2000)
    expect(counter).to_have_text("2000/2000")
    expect(send).to_be_enabled()
    send.click()
    changes = wait_for_changes(page, 2)
    assert changes[-1]["description"] == "\U0001f600" * 2000
    entry = stored("responses", output_id)
    assert (entry["rating"], entry["description"]) == ("thumbs_down", "\U0001f600" * 2000)


def test_comment_always_saves_before_any_vote_and_off_shows_no_box(page, pages):
    output_id = open_widget(page, pages, comment="always")
    box = widget(page).get_by_role("textbox")
    expect(box).to_be_visible()
    box.fill("Nice and short.")
    widget(page).get_by_role("button", name="Send", exact=True).click()
    wait_for_changes(page, 1)
    entry = stored("responses", output_id)
    assert entry["description"] == "Nice and short." and "rating" not in entry

    open_widget(page, pages, comment="off")
    thumb(page, DOWN).click()
    wait_for_changes(page, 1)
    expect(widget(page).get_by_role("textbox")).to_have_count(0)


def test_label_attributes_are_the_accessible_names(page, pages):
    open_widget(
        page, pages, label_up="Helpful", label_down="Not helpful", label_comment="Tell us more", label_send="Submit"
    )
    expect(thumb(page, "Helpful")).to_be_visible()
    thumb(page, "Not helpful").click()
    wait_for_changes(page, 1)
    expect(widget(page).get_by_role("textbox", name="Tell us more")).to_be_visible()
    expect(widget(page).get_by_role("button", name="Submit", exact=True)).to_be_visible()
    set_attribute(page, "label-up", "Great")
    expect(thumb(page, "Great")).to_be_visible()


def test_a_failed_vote_rolls_back_with_a_visible_error_and_retry_saves_it(page, pages):
    output_id = open_widget(page, pages)
    up = thumb(page, UP)
    expect(up).to_be_visible()
    held = fail_with_503(page, "POST", pages)

    up.click()
    # Optimistic: pressed while the request is still out.
    expect(up).to_have_attribute("aria-pressed", "true")
    answer_503(page, held, pages)
    alert = widget(page).get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("unavailable")
    expect(up).to_have_attribute("aria-pressed", "false")
    assert stored("responses", output_id) is None

    widget(page).get_by_role("button", name="Retry").click()
    assert wait_for_changes(page, 1)[-1]["rating"] == "thumbs_up"
    assert stored("responses", output_id)["rating"] == "thumbs_up"
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(alert).to_be_hidden()


def test_a_failed_comment_keeps_the_typed_text_and_retry_saves_it(page, pages):
    output_id = open_widget(page, pages)
    thumb(page, DOWN).click()
    wait_for_changes(page, 1)
    held = fail_with_503(page, "PUT", pages)
    box = widget(page).get_by_role("textbox")
    box.fill("The answer cites no source.")

    widget(page).get_by_role("button", name="Send", exact=True).click()
    answer_503(page, held, pages)
    expect(widget(page).get_by_role("alert")).to_be_visible()
    expect(box).to_have_value("The answer cites no source.")
    assert "description" not in stored("responses", output_id)

    widget(page).get_by_role("button", name="Retry").click()
    wait_for_changes(page, 2)
    assert stored("responses", output_id)["description"] == "The answer cites no source."
    expect(box).to_have_value("The answer cites no source.")


def bogus_token():
    return "lft_" + uuid.uuid4().hex + uuid.uuid4().hex


def test_an_expired_token_fires_the_event_and_a_new_token_attribute_is_used(page, pages):
    output_id = open_widget(page, pages, token=bogus_token())
    page.wait_for_function("window.expired.length >= 1")
    assert page.evaluate("window.expired") == [{"kind": "responses", "id": output_id}]
    expect(widget(page).get_by_role("alert")).to_contain_text("session expired")
    expect(thumb(page, UP)).to_be_hidden()

    set_attribute(page, "token", mint_token("responses", output_id))
    thumb(page, UP).click()
    wait_for_changes(page, 1)
    assert stored("responses", output_id)["rating"] == "thumbs_up"


def test_a_token_expiring_mid_session_is_renewed_by_the_page_and_the_vote_saved(page, pages):
    output_id = open_widget(page, pages)
    expect(thumb(page, UP)).to_be_visible()
    # The page renews the token when the widget says it expired.
    page.evaluate("t => { window.nextToken = t; }", mint_token("responses", output_id))
    set_attribute(page, "token", bogus_token())

    thumb(page, DOWN).click()
    assert wait_for_changes(page, 1)[-1]["rating"] == "thumbs_down"
    assert page.evaluate("window.expired.length") == 1
    assert stored("responses", output_id)["rating"] == "thumbs_down"
    expect(widget(page).get_by_role("alert")).to_be_hidden()


def test_keyboard_only_with_visible_focus(page, pages):
    output_id = open_widget(page, pages)
    expect(thumb(page, UP)).to_be_visible()

    page.keyboard.press("Tab")
    assert focused(page) == UP
    outline = page.evaluate(
        """() => { const s = getComputedStyle(document.querySelector('llm-feedback').shadowRoot.activeElement);
                   return [s.outlineStyle, s.outlineWidth]; }"""
    )
    assert outline[0] != "none" and outline[1] != "0px", outline
    page.keyboard.press("Space")
    wait_for_changes(page, 1)
    assert stored("responses", output_id)["rating"] == "thumbs_up"

    page.keyboard.press("Tab")
    assert focused(page) == DOWN
    page.keyboard.press("Enter")
    wait_for_changes(page, 2)
    assert stored("responses", output_id)["rating"] == "thumbs_down"

    page.keyboard.press("Tab")
    assert focused(page) == "TEXTAREA"
    page.keyboard.type("Typed without a mouse.")
    page.keyboard.press("Tab")
    assert focused(page) == "Send"
    page.keyboard.press("Enter")
    wait_for_changes(page, 3)
    assert stored("responses", output_id)["description"] == "Typed without a mouse."

    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert focused(page) == DOWN
    page.keyboard.press("Space")
    wait_for_changes(page, 4)
    assert "rating" not in stored("responses", output_id)


@pytest.mark.parametrize(
    "attributes, named",
    [
        ({"kind": None}, "kind"),
        ({"kind": "answers"}, "kind"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"output-id": " padded "}, "output-id"),
        ({"token": None}, "token"),
        ({"comment": "sometimes"}, "comment"),
    ],
)
def test_missing_or_invalid_attributes_show_an_inert_error_and_warn_once(page, pages, attributes, named):
    output_id = new_id()
    attrs = {"endpoint": BASE_URL, "kind": "responses", "output-id": output_id, "token": mint_token("responses", output_id)}
    attrs.update(attributes)
    page.goto(pages.add(widget_page(attrs)))

    error = widget(page).locator(".error[part~=invalid]")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f'"{named}"')
    expect(widget(page).locator("button:visible, textarea:visible")).to_have_count(0)
    page.wait_for_timeout(200)
    assert len(page.warnings) == 1, page.warnings
    assert named in page.warnings[0]

    # Fixed in place, it works without a reload.
    fixed = {"kind": "responses", "endpoint": BASE_URL, "output-id": output_id,
             "token": attrs["token"] or mint_token("responses", output_id), "comment": "on-thumbs-down"}
    set_attribute(page, named, fixed[named])
    thumb(page, UP).click()
    wait_for_changes(page, 1)
    assert stored("responses", output_id)["rating"] == "thumbs_up"
    assert len(page.warnings) == 1, page.warnings


THEME = """
llm-feedback {
  --llm-feedback-font: Georgia, serif;
  --llm-feedback-color: #3b0764;
  --llm-feedback-background: #faf5ff;
  --llm-feedback-border-color: #7c3aed;
  --llm-feedback-accent: #6d28d9;
  --llm-feedback-accent-color: #ffffff;
  --llm-feedback-focus: #6d28d9;
  --llm-feedback-radius: 12px;
  --llm-feedback-muted: #5b21b6;
}
llm-feedback::part(button) { padding: 0 14px; border-radius: 999px; }
"""


@pytest.mark.parametrize("style", ["", THEME], ids=["default", "themed"])
def test_axe_core_finds_no_violation_in_any_state(page, pages, style):
    open_widget(page, pages, style=style)
    expect(thumb(page, UP)).to_be_visible()
    assert axe_violations(page) == []

    thumb(page, DOWN).click()
    wait_for_changes(page, 1)
    widget(page).get_by_role("textbox").fill("x" * 2001)
    assert axe_violations(page) == []

    held = fail_with_503(page, "PUT", pages)
    thumb(page, UP).click()
    answer_503(page, held, pages)
    expect(widget(page).get_by_role("alert")).to_be_visible()
    assert axe_violations(page) == []

    page.goto(pages.add(widget_page({"endpoint": BASE_URL, "kind": "responses"}, style=style)))
    expect(widget(page).locator(".error[part~=invalid]")).to_be_visible()
    assert axe_violations(page) == []


def test_custom_properties_and_parts_theme_it_and_screenshots_are_saved(page, pages):
    shots = os.environ["SCREENSHOT_DIR"]
    for style, name in [("", "widget.png"), (THEME, "widget-themed.png")]:
        open_widget(page, pages, style=style)
        thumb(page, DOWN).click()
        wait_for_changes(page, 1)
        widget(page).get_by_role("textbox").fill("It named the wrong river.")
        page.evaluate("document.querySelector('llm-feedback').shadowRoot.activeElement?.blur()")
        page.locator(".card").screenshot(path=os.path.join(shots, name))
    pressed = thumb(page, DOWN).evaluate("b => [getComputedStyle(b).backgroundColor, getComputedStyle(b).paddingLeft]")
    assert pressed == ["rgb(109, 40, 217)", "14px"], pressed


def test_a_page_on_an_origin_cors_does_not_name_cannot_use_the_api(page, other_pages):
    output_id = new_id()
    token = mint_token("responses", output_id)
    attrs = {"endpoint": BASE_URL, "kind": "responses", "output-id": output_id, "token": token}
    page.goto(other_pages.add(widget_page(attrs)))

    # The module itself loads from anywhere; the API answers it nothing readable.
    assert page.evaluate("!!customElements.get('llm-feedback')")
    expect(widget(page).get_by_role("alert")).to_contain_text("could not be reached")
    expect(thumb(page, UP)).to_be_hidden()
    outcome = page.evaluate(
        """async ([url, token, id]) => {
             try {
               await fetch(url, {method: 'POST', body: JSON.stringify({id, rating: 'thumbs_up'}),
                                 headers: {Authorization: 'Bearer ' + token, 'Content-Type': 'application/json'}});
               return 'answered';
             } catch (e) { return 'blocked'; }
           }""",
        [API + "/responses", token, output_id],
    )
    assert outcome == "blocked"
    assert stored("responses", output_id) is None


def test_the_served_module_is_at_most_8_kib_gzipped():
    with urllib.request.urlopen(BASE_URL + "/widget.js", timeout=10) as response:
        body = response.read()
    size = len(gzip.compress(body, compresslevel=9))
    print(f"\nwidget.js: {len(body)} bytes, {size} bytes gzipped (limit 8192)")
    assert size <= 8192, size
