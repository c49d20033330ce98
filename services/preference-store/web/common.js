// Shared by the ranking page and the dashboard: JSON calls with the session's CSRF token, and
// text-only rendering. Nothing from the server is ever assigned to innerHTML.
"use strict";

const rlhf = {
  csrf: null,

  async call(method, path, body) {
    const headers = { "content-type": "application/json" };
    if (this.csrf) headers["x-csrf-token"] = this.csrf;
    const response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    if (response.status !== 204) {
      try { json = await response.json(); } catch (_) { json = null; }
    }
    return { status: response.status, json };
  },

  // The current session (and its CSRF token), or null when logged out.
  async session() {
    const r = await this.call("GET", "/api/session");
    if (r.status !== 200) return null;
    this.csrf = r.json.csrf;
    return r.json;
  },

  // An element with text content only.
  el(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (className) e.className = className;
    return e;
  },

  show(id, visible) { document.getElementById(id).hidden = !visible; },
  text(id, value) { document.getElementById(id).textContent = value; },
};
