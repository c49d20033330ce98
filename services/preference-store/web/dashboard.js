// The admin dashboard: collection progress, agreement per annotator and overall, position bias,
// flagged tasks; admins pause and resume annotators here. Text only, refreshed every 15 seconds.
"use strict";

function percent(agreement) {
  if (!agreement || !agreement.pairs) return "–";
  return (100 * agreement.agree / agreement.pairs).toFixed(0) + "% of " + agreement.pairs;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.round(ms / 1000);
  return s < 90 ? s + " s" : (s / 60).toFixed(1) + " min";
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

async function setPaused(annotator, paused) {
  const r = await rlhf.call("POST", "/api/annotators/pause", { annotator, paused });
  if (r.status !== 204) rlhf.text("error", (r.json && r.json.error) || "refused");
  await refresh();
}

function render(d) {
  const q = d.quality;
  rlhf.text("progress", d.progress.complete + " / " + d.progress.tasks);
  rlhf.text("progress-label", "tasks complete" +
    (d.progress.flagged ? " (" + d.progress.flagged + " flagged: withdrawn)" : ""));
  rlhf.text("missing", String(d.progress.missing));
  rlhf.text("alpha", q.alpha === null ? "–" : q.alpha.toFixed(2));
  rlhf.text("first-card", (100 * q.first_card_wins).toFixed(0) + "%");
  rlhf.text("first-card-label", "first card wins (chance " + (100 * q.first_card_chance).toFixed(0) + "%)");
  const quality = new Map(q.annotators.map((a) => [a.annotator, a]));
  const rows = document.getElementById("rows");
  rows.replaceChildren();
  for (const a of d.annotators) {
    const own = quality.get(a.annotator) || { rankings: 0, gold: null, peers: null, first_card_wins: 0 };
    const button = rlhf.el("button", a.paused ? "Resume" : "Pause");
    button.type = "button";
    button.addEventListener("click", () => setPaused(a.annotator, !a.paused));
    const name = a.annotator + (a.admin ? " (admin)" : "") + (a.paused ? " · paused" : "");
    rows.appendChild(row([
      name, a.ranked, a.skipped, a.flagged, duration(a.median_ms_per_task),
      percent(own.gold), percent(own.peers),
      own.rankings ? (100 * own.first_card_wins / own.rankings).toFixed(0) + "%" : "–", button,
    ]));
  }
  const flags = document.getElementById("flags");
  flags.replaceChildren();
  for (const f of d.flags) flags.appendChild(row([f.task_id, f.annotator, f.reason]));
  rlhf.show("flags-section", d.flags.length > 0);
  rlhf.show("overall", true);
  rlhf.show("people", true);
}

async function refresh() {
  const r = await rlhf.call("GET", "/api/dashboard");
  if (r.status === 200) {
    rlhf.text("error", "");
    render(r.json);
  } else {
    rlhf.text("error", (r.json && r.json.error) || "could not load the dashboard (" + r.status + ")");
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const session = await rlhf.session();
  if (!session) {
    rlhf.text("error", "Log in on the ranking page first.");
    return;
  }
  rlhf.text("who", session.annotator);
  await refresh();
  setInterval(refresh, 15000);
});
