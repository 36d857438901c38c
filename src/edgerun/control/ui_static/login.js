"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const problem = document.getElementById("problem");
  problem.textContent = "";
  const resp = await fetch("/ui/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key: document.getElementById("key").value }),
  });
  if (resp.ok) {
    window.location.assign("/ui");
    return;
  }
  let message = `HTTP ${resp.status}`;
  try {
    message = (await resp.json()).error.message;
  } catch (_) { /* keep the status */ }
  problem.textContent = message;
});
