"use strict";
// Live tables from /ui/events (one JSON snapshot a second). Every value is set with
// textContent: function names and errors come from users.

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function fill(id, rows, render) {
  const body = document.querySelector(`#${id} tbody`);
  const fresh = document.createElement("tbody");
  for (const item of rows) {
    const tr = document.createElement("tr");
    render(tr, item);
    fresh.append(tr);
  }
  body.replaceWith(fresh);
}

const ms = (v) => (v === null || v === undefined ? null : v.toFixed(1));
const pairs = (obj) => Object.entries(obj).map(([k, v]) => `${k} ${v}`).join(", ");

function render(snap) {
  fill("nodes", snap.nodes, (tr, n) => {
    tr.dataset.node = n.name;
    cell(tr, n.name);
    cell(tr, n.role);
    cell(tr, n.state, `state-${n.state}`);
    cell(tr, n.url);
    cell(tr, n.last_seen_s === null || n.last_seen_s === undefined ? null :
      `${n.last_seen_s.toFixed(1)} s ago`);
    const p = n.pool;
    cell(tr, p.capacity_mb ? `${p.used_mb} / ${p.capacity_mb} MB` : null, "pool");
    cell(tr, p.busy === null || p.busy === undefined ? null : `${p.busy} / ${p.idle}`);
    cell(tr, n.links.map((l) =>
      `${l.name} ${l.healthy ? "up" : "down"} ${l.latency_ms.toFixed(1)} ms`).join(", "));
  });
  fill("pops", snap.pops, (tr, p) => {
    tr.dataset.pop = p.name;
    cell(tr, p.name);
    cell(tr, p.rate, "rate");
    cell(tr, p.here_share === null ? null : `${Math.round(p.here_share * 100)}%`, "share");
    cell(tr, pairs(p.reasons));
  });
  fill("functions", snap.functions, (tr, f) => {
    tr.dataset.function = f.name;
    cell(tr, f.name);
    cell(tr, f.calls_per_min, "calls");
    cell(tr, ms(f.p50_ms), "p50");
    cell(tr, ms(f.p99_ms), "p99");
    cell(tr, f.cold_starts, "cold");
    cell(tr, pairs(f.runs_on));
    cell(tr, f.placement);
    cell(tr, f.versions);
    cell(tr, pairs(f.aliases));
  });
  fill("errors", snap.errors, (tr, e) => {
    cell(tr, new Date(e.at * 1000).toLocaleTimeString());
    cell(tr, e.node);
    cell(tr, e.function);
    cell(tr, e.status);
    cell(tr, e.error);
    const td = cell(tr, "");
    const a = document.createElement("a");
    a.href = `/ui/logs?request_id=${encodeURIComponent(e.request_id)}`;
    a.textContent = e.request_id;
    td.append(a);
  });
  document.getElementById("updated").textContent =
    `updated ${new Date(snap.at * 1000).toLocaleTimeString()}`;
  document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
}

const live = document.getElementById("live");
const source = new EventSource("/ui/events");
source.onopen = () => { live.textContent = "live"; live.className = "badge on"; };
source.onerror = () => { live.textContent = "reconnecting…"; live.className = "badge"; };
source.onmessage = (event) => render(JSON.parse(event.data));
source.addEventListener("logout", () => window.location.assign("/ui/login"));

document.getElementById("logout").addEventListener("click", async () => {
  source.close();
  await fetch("/ui/logout", { method: "POST" });
  window.location.assign("/ui/login");
});
