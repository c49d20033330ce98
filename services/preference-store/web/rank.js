// The ranking page: a task's prompt and K response cards, ordered best first by dragging (pointer
// events, so mouse, pen and touch alike) or by keyboard alone (a card's number picks it, arrows
// move it, Enter submits). The card order is the ranking, so a tie cannot be entered.
"use strict";

const page = {
  task: null,
  order: [], // indices into task.responses, best first
  selected: null, // the picked card's index into task.responses
  nodes: [], // one <li> per response, by index
  busy: false,
  poll: null,
};

function renderOrder() {
  const list = document.getElementById("cards");
  page.order.forEach((index, position) => {
    const li = page.nodes[index];
    li.querySelector(".rank").textContent = "#" + (position + 1);
    li.classList.toggle("selected", index === page.selected);
    li.setAttribute("aria-selected", index === page.selected ? "true" : "false");
    // Move only what moved: taking a node out of the page drops its focus.
    if (list.children[position] !== li) list.insertBefore(li, list.children[position] || null);
  });
}

function card(text, index) {
  const li = rlhf.el("li", null, "card");
  li.tabIndex = 0;
  li.dataset.index = String(index);
  const head = rlhf.el("div", null, "card-head");
  head.appendChild(rlhf.el("span", null, "rank"));
  head.appendChild(rlhf.el("span", "Response " + (index + 1) + " · key " + (index + 1), "key"));
  li.appendChild(head);
  li.appendChild(rlhf.el("div", text, "text")); // text only: markup in a response stays inert
  li.addEventListener("pointerdown", (e) => startDrag(e, index));
  li.addEventListener("focus", () => { page.selected = index; renderOrder(); });
  return li;
}

function showTask(task) {
  page.task = task;
  page.order = task.responses.map((_, i) => i);
  page.selected = null;
  rlhf.text("prompt", task.prompt);
  const list = document.getElementById("cards");
  list.replaceChildren();
  page.nodes = task.responses.map((text, i) => card(text, i));
  renderOrder();
  rlhf.text("task-error", "");
  rlhf.show("flag", false);
  rlhf.show("empty", false);
  rlhf.show("task", true);
}

async function loadTask() {
  clearTimeout(page.poll);
  const r = await rlhf.call("GET", "/api/task");
  if (r.status === 401) return showLogin();
  if (r.status === 200) return showTask(r.json);
  page.task = null;
  rlhf.show("task", false);
  rlhf.show("empty", true);
  if (r.status !== 204) rlhf.text("status", (r.json && r.json.error) || "could not load a task");
  page.poll = setTimeout(loadTask, 10000);
}

// Moves the card at index `index` to `position` in the order.
function moveTo(index, position) {
  const from = page.order.indexOf(index);
  const to = Math.max(0, Math.min(page.order.length - 1, position));
  if (from === to) return;
  page.order.splice(from, 1);
  page.order.splice(to, 0, index);
  renderOrder();
}

function startDrag(event, index) {
  if (event.button !== 0 || page.busy) return;
  const li = page.nodes[index];
  page.selected = index;
  li.classList.add("dragging");
  renderOrder();
  event.preventDefault(); // no text selection while dragging
  const onMove = (e) => {
    // The card goes where the pointer is: before the first card whose middle lies below it.
    const others = page.order.filter((i) => i !== index);
    let position = others.length;
    for (let p = 0; p < others.length; p++) {
      const box = page.nodes[others[p]].getBoundingClientRect();
      if (e.clientY < box.top + box.height / 2) { position = p; break; }
    }
    moveTo(index, position);
  };
  // The document, not the card, follows the pointer: the card moves in the page as it is
  // dragged, which would end a pointer capture.
  const onUp = () => {
    li.classList.remove("dragging");
    li.focus();
    document.removeEventListener("pointermove", onMove);
    document.removeEventListener("pointerup", onUp);
    document.removeEventListener("pointercancel", onUp);
  };
  document.addEventListener("pointermove", onMove);
  document.addEventListener("pointerup", onUp);
  document.addEventListener("pointercancel", onUp);
}

async function act(path, body, done) {
  if (!page.task || page.busy) return;
  page.busy = true;
  try {
    const r = await rlhf.call("POST", path, body);
    if (r.status === 204) {
      rlhf.text("status", done);
      await loadTask();
    } else {
      rlhf.text("task-error", (r.json && r.json.error) || "refused (" + r.status + ")");
    }
  } finally {
    page.busy = false;
  }
}

function submitRanking() {
  act("/api/rank", { task_id: page.task.task_id, order: page.order.slice() }, "Ranking saved.");
}

function onKey(e) {
  if (!page.task || document.getElementById("task").hidden) return;
  const target = e.target;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
  if (/^[1-9]$/.test(e.key)) {
    const index = Number(e.key) - 1;
    if (index < page.task.responses.length) {
      page.selected = index;
      page.nodes[index].focus();
      renderOrder();
      e.preventDefault();
    }
  } else if ((e.key === "ArrowUp" || e.key === "ArrowDown") && page.selected !== null) {
    const position = page.order.indexOf(page.selected) + (e.key === "ArrowUp" ? -1 : 1);
    moveTo(page.selected, position);
    page.nodes[page.selected].focus();
    e.preventDefault();
  } else if (e.key === "Enter" && (target === document.body || (target && target.classList.contains("card")))) {
    e.preventDefault();
    submitRanking();
  }
}

function showLogin() {
  rlhf.show("task", false);
  rlhf.show("empty", false);
  rlhf.show("login", true);
  document.getElementById("token").focus();
}

async function start() {
  const session = await rlhf.session();
  if (!session) return showLogin();
  rlhf.show("login", false);
  rlhf.text("who", session.annotator + (session.admin ? " (admin)" : ""));
  rlhf.show("dashboard-link", session.admin);
  await loadTask();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await rlhf.call("POST", "/api/login", { token: document.getElementById("token").value });
    if (r.status !== 200) {
      rlhf.text("login-error", (r.json && r.json.error) || "login failed");
      return;
    }
    document.getElementById("token").value = "";
    rlhf.text("login-error", "");
    await start();
  });
  document.getElementById("submit").addEventListener("click", submitRanking);
  document.getElementById("skip").addEventListener("click", () =>
    act("/api/decline", { task_id: page.task && page.task.task_id }, "Skipped."));
  document.getElementById("flag-open").addEventListener("click", () => {
    rlhf.show("flag", true);
    document.getElementById("flag-reason").focus();
  });
  document.getElementById("flag-cancel").addEventListener("click", () => rlhf.show("flag", false));
  document.getElementById("flag").addEventListener("submit", (e) => {
    e.preventDefault();
    const reason = document.getElementById("flag-reason").value.trim();
    if (!reason) return;
    document.getElementById("flag-reason").value = "";
    act("/api/decline", { task_id: page.task.task_id, flag: reason }, "Flagged.");
  });
  document.getElementById("guidelines-toggle").addEventListener("click", async (e) => {
    const panel = document.getElementById("guidelines");
    if (panel.hidden && !document.getElementById("guidelines-text").textContent) {
      const r = await fetch("/api/guidelines", { credentials: "same-origin" });
      rlhf.text("guidelines-text", r.ok ? await r.text() : "No guidelines are configured.");
    }
    panel.hidden = !panel.hidden;
    e.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
  });
  document.addEventListener("keydown", onKey);
  start();
});
