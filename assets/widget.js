// <llm-feedback>: thumbs up/down and an optional comment on one LLM output,
// saved to an llm-feedback service with a feedback token. Dependency-free ES
// module, served by the service at GET /widget.js. Behaviour: API.md,
// "Feedback tokens and the browser widget".
//
//   <script type="module" src="https://feedback.example.com/widget.js"></script>
//   <llm-feedback endpoint="https://feedback.example.com" kind="responses"
//                 output-id="resp-1" token="lft_..."></llm-feedback>

const KINDS = ["completions", "responses"];
const MODES = ["off", "on-thumbs-down", "always"];
const MAX = 2000;
const UP = "thumbs_up";
const DOWN = "thumbs_down";
const LABELS = {
  "label-up": "Good response",
  "label-down": "Bad response",
  "label-comment": "What could be better?",
  "label-send": "Send",
};
// Feather's thumbs-up outline (MIT); thumbs down is the same, turned over.
const THUMB =
  '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path d="M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3"/></svg>';

const CSS = `
:host{display:inline-block;font-family:var(--llm-feedback-font,system-ui,sans-serif);font-size:var(--llm-feedback-font-size,14px);color:var(--llm-feedback-color,#1f2328)}
:host([hidden]){display:none}
[hidden]{display:none!important}
.row{display:flex;gap:var(--llm-feedback-gap,6px);align-items:center;flex-wrap:wrap}
button{font:inherit;color:inherit;background:var(--llm-feedback-background,#fff);border:1px solid var(--llm-feedback-border-color,#6e7781);border-radius:var(--llm-feedback-radius,6px);padding:4px 10px;min-height:32px;cursor:pointer}
button.thumb{display:inline-flex;align-items:center;justify-content:center;min-width:36px;padding:0}
button[aria-pressed=true]{background:var(--llm-feedback-accent,#0b57d0);border-color:var(--llm-feedback-accent,#0b57d0);color:var(--llm-feedback-accent-color,#fff)}
button:disabled{cursor:not-allowed;opacity:.6}
button:focus-visible,textarea:focus-visible{outline:2px solid var(--llm-feedback-focus,#0b57d0);outline-offset:2px}
svg{flex:none;width:18px;height:18px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}
.down svg{transform:rotate(180deg)}
.comment{display:flex;flex-direction:column;gap:4px;margin-top:var(--llm-feedback-gap,6px)}
textarea{font:inherit;color:inherit;background:var(--llm-feedback-background,#fff);border:1px solid var(--llm-feedback-border-color,#6e7781);border-radius:var(--llm-feedback-radius,6px);padding:6px;min-width:16em;min-height:4em;box-sizing:border-box}
.counter{font-size:.85em;color:var(--llm-feedback-muted,#57606a)}
.over{color:var(--llm-feedback-error,#b3261e)}
.error{color:var(--llm-feedback-error,#b3261e);margin-top:var(--llm-feedback-gap,6px)}
.status{font-size:.85em;color:var(--llm-feedback-muted,#57606a)}
`;

const valid = {
  endpoint(v) {
    try {
      const u = new URL(v);
      return /^https?:$/.test(u.protocol) && !u.search && !u.hash;
    } catch {
      return false;
    }
  },
  kind: (v) => KINDS.includes(v),
  // API.md: 1 to 256 characters, no control characters, no surrounding whitespace.
  "output-id": (v) => {
    const n = [...v].length;
    return n >= 1 && n <= 256 && !/[\u0000-\u001f\u007f-\u009f]/.test(v) && !/^\s|\s$/u.test(v);
  },
  // A header value: printable ASCII.
  token: (v) => /^[\x21-\x7e]+$/.test(v),
};

const el = (tag, props = {}, children = []) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) e.setAttribute(k, v);
  e.append(...children);
  return e;
};

class LlmFeedback extends HTMLElement {
  static observedAttributes = ["endpoint", "kind", "output-id", "token", "comment", ...Object.keys(LABELS)];

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    this._up = el("button", { type: "button", class: "thumb up", part: "button thumb up", "aria-pressed": "false" });
    this._down = el("button", { type: "button", class: "thumb down", part: "button thumb down", "aria-pressed": "false" });
    this._up.innerHTML = this._down.innerHTML = THUMB;
    this._status = el("span", { class: "status", role: "status" });
    this._thumbs = el("div", { class: "row", part: "thumbs" }, [this._up, this._down, this._status]);
    this._text = el("textarea", { id: "text", rows: "3", part: "comment", "aria-describedby": "counter" });
    this._labelText = el("label", { for: "text" });
    this._counter = el("span", { id: "counter", class: "counter", part: "counter" });
    this._send = el("button", { type: "button", part: "button send" });
    this._comment = el("div", { class: "comment", hidden: "" }, [
      this._labelText,
      this._text,
      el("div", { class: "row" }, [this._send, this._counter]),
    ]);
    this._errorText = el("span");
    this._retry = el("button", { type: "button", part: "button retry" }, ["Retry"]);
    this._error = el("div", { class: "error", part: "error", role: "alert", hidden: "" }, [this._errorText, " ", this._retry]);
    this._main = el("div", { hidden: "" }, [this._thumbs, this._comment]);
    this._invalid = el("p", { class: "error", part: "error invalid", hidden: "" });
    root.append(el("style", {}, [CSS]), this._main, this._error, this._invalid);

    this._up.onclick = () => this._vote(UP);
    this._down.onclick = () => this._vote(DOWN);
    this._send.onclick = () => this._sendComment();
    this._retry.onclick = () => (this._pending ? this._enqueue(this._pending) : this._load());
    this._text.oninput = () => {
      this._typed = true;
      this._render();
    };
    this._chain = Promise.resolve();
    this._warned = "";
    this._reset();
  }

  _reset() {
    this._loaded = false;
    this._exists = false;
    this._saved = { rating: null, description: undefined };
    this._shown = null;
    this._pending = null;
    this._expired = false;
  }

  connectedCallback() {
    this._configure();
  }

  attributeChangedCallback(name, old, value) {
    if (!this.isConnected || old === value) return;
    if (name === "token") {
      if (!this._problem()) {
        if (this._invalid.hidden === false) return this._configure();
        if (this._expired) {
          // A renewed token: finish what the expired one could not.
          this._expired = false;
          this._pending ? this._enqueue(this._pending) : this._load();
        }
        return;
      }
    }
    this._configure();
  }

  // The first thing wrong with the attributes, or "".
  _problem() {
    for (const name of ["endpoint", "kind", "output-id", "token"]) {
      const v = this.getAttribute(name);
      if (v === null || v === "") return `the "${name}" attribute is missing`;
      if (!valid[name](v)) return `the "${name}" attribute is invalid`;
    }
    const mode = this.getAttribute("comment");
    if (mode !== null && !MODES.includes(mode)) return `the "comment" attribute must be one of ${MODES.join(", ")}`;
    return "";
  }

  _configure() {
    const problem = this._problem();
    this._invalid.hidden = !problem;
    if (problem) {
      this._invalid.textContent = `Feedback is unavailable: ${problem}.`;
      this._main.hidden = this._error.hidden = true;
      if (this._warned !== problem) console.warn(`<llm-feedback>: ${problem}.`);
      this._warned = problem;
      return;
    }
    this._warned = "";
    const key = [this.getAttribute("endpoint"), this.getAttribute("kind"), this.getAttribute("output-id")].join("\n");
    if (this._key !== key) {
      this._key = key;
      this._reset();
      this._load();
    }
    this._render();
  }

  _label(name) {
    return this.getAttribute(name) || LABELS[name];
  }

  get _mode() {
    return this.getAttribute("comment") || "on-thumbs-down";
  }

  _url(withId) {
    const base = this.getAttribute("endpoint").replace(/\/+$/, "");
    const kind = this.getAttribute("kind");
    const id = withId ? "/" + encodeURIComponent(this.getAttribute("output-id")) : "";
    return `${base}/api/v1/llm/feedback/${kind}${id}`;
  }

  async _request(method, withId, body) {
    try {
      const response = await fetch(this._url(withId), {
        method,
        mode: "cors",
        credentials: "omit",
        cache: "no-store",
        headers: {
          Authorization: `Bearer ${this.getAttribute("token")}`,
          ...(body ? { "Content-Type": "application/json" } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
      });
      let data = null;
      try {
        data = await response.json();
      } catch {}
      return { status: response.status, data };
    } catch {
      return { status: 0, data: null };
    }
  }

  _fire(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { bubbles: true, composed: true, detail }));
  }

  // Shows a failure; a 401 also asks the page for a new token.
  _fail(status, what) {
    const why =
      status === 401 ? "your session expired" : status === 0 ? "the service could not be reached" : status === 429 ? "too many requests" : status >= 500 ? "the service is unavailable" : `error ${status}`;
    this._errorText.textContent = `Could not ${what}: ${why}.`;
    this._error.hidden = false;
    if (status === 401) {
      // The page may answer by setting a new token, at once or later.
      this._expired = true;
      this._fire("llm-feedback-token-expired", { kind: this.getAttribute("kind"), id: this.getAttribute("output-id") });
    }
  }

  _accept(entry) {
    this._exists = true;
    this._saved = { rating: entry.rating || null, description: entry.description };
    if (!this._typed && entry.description !== undefined) this._text.value = entry.description;
  }

  async _load() {
    const key = this._key;
    this._error.hidden = true;
    this._status.textContent = "Loading…";
    const { status, data } = await this._request("GET", true);
    if (key !== this._key) return;
    this._status.textContent = "";
    if (status === 200 && data) this._accept(data);
    else if (status !== 404) return this._fail(status, "load your feedback");
    this._loaded = true;
    this._shown = this._saved.rating;
    this._render();
  }

  _vote(rating) {
    const target = this._shown === rating ? null : rating;
    this._enqueue({ rating: target });
  }

  _sendComment() {
    const change = { description: this._text.value };
    if (this._shown !== this._saved.rating) change.rating = this._shown;
    this._enqueue(change);
  }

  // Shows the change at once, then saves it after any save in flight.
  _enqueue(change) {
    if ("rating" in change) this._shown = change.rating;
    this._pending = change;
    this._error.hidden = true;
    this._render();
    // Dropped if the element shows another output by the time its turn comes.
    const key = this._key;
    this._chain = this._chain.then(() => key === this._key && this._save(change)).catch(() => {});
  }

  async _save(change) {
    const key = this._key;
    this._status.textContent = "Saving…";
    let result;
    // POST when there is no entry yet, PUT otherwise; one switch over if
    // another tab got there first (409) or the entry went away (404).
    for (let attempt = 0; attempt < 2; attempt++) {
      result = this._exists
        ? await this._request("PUT", true, change)
        : await this._request("POST", false, { id: this.getAttribute("output-id"), ...change });
      if ((result.status === 409 && !this._exists) || (result.status === 404 && this._exists)) this._exists = !this._exists;
      else break;
    }
    if (key !== this._key) return;
    this._status.textContent = "";
    const { status, data } = result;
    if ((status === 200 || status === 201) && data) {
      this._accept(data);
      if (this._pending === change) {
        this._pending = null;
        this._shown = this._saved.rating;
      }
      this._status.textContent = "Saved";
      this._error.hidden = true;
      this._render();
      this._fire("llm-feedback-change", {
        kind: this.getAttribute("kind"),
        id: this.getAttribute("output-id"),
        rating: this._saved.rating,
        description: this._saved.description ?? null,
      });
      return;
    }
    // Roll back to what is stored; the typed comment stays in its box.
    if (this._pending === change) this._shown = this._saved.rating;
    this._render();
    this._fail(status, "save your feedback");
  }

  _render() {
    const label = (name) => this._label(name);
    this._main.hidden = !this._loaded || !this._invalid.hidden;
    this._up.setAttribute("aria-label", label("label-up"));
    this._down.setAttribute("aria-label", label("label-down"));
    this._up.setAttribute("aria-pressed", String(this._shown === UP));
    this._down.setAttribute("aria-pressed", String(this._shown === DOWN));
    this._labelText.textContent = label("label-comment");
    this._send.textContent = label("label-send");
    const mode = this._mode;
    this._comment.hidden = mode === "off" || (mode === "on-thumbs-down" && this._shown !== DOWN);
    const n = [...this._text.value].length;
    const over = n > MAX;
    this._counter.textContent = `${n}/${MAX}`;
    this._counter.classList.toggle("over", over);
    this._text.setAttribute("aria-invalid", String(over));
    this._send.disabled = over;
  }
}

if (!customElements.get("llm-feedback")) customElements.define("llm-feedback", LlmFeedback);

export { LlmFeedback };
