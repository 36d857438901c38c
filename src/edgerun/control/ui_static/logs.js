"use strict";
(async () => {
  const id = new URLSearchParams(window.location.search).get("request_id") || "";
  document.getElementById("request").textContent = `request ${id}`;
  const box = document.getElementById("entries");
  const resp = await fetch(`/ui/api/logs?request_id=${encodeURIComponent(id)}`);
  if (resp.status === 401) { window.location.assign("/ui/login"); return; }
  const { logs } = await resp.json();
  if (!logs.length) { box.textContent = "No node has entries for this request (any more)."; }
  for (const e of logs) {
    const h = document.createElement("h2");
    h.textContent = `${new Date(e.at * 1000).toISOString()} · ${e.node} · ${e.function} · ` +
      `${e.status}${e.error ? " " + e.error : ""} · ${e.duration_ms.toFixed(1)} ms · ` +
      `${e.placement || "-"}${e.reason ? " (" + e.reason + ")" : ""}`;
    const pre = document.createElement("pre");
    pre.textContent = e.output || "(no output)";
    box.append(h, pre);
  }
})();
