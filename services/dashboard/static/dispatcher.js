// Dispatcher page: dry-run preview, ready tasks with reasons, last tick.
"use strict";

(() => {
  const { api, el, banner, time } = Longshore;
  const BUCKETS = [
    ["spawned", "Spawned"], ["promoted", "Promoted (todo → ready)"],
    ["auto_assigned_default", "Took the default assignee"], ["skipped_unassigned", "Skipped: no assignee"],
    ["skipped_nonspawnable", "Skipped: assignee not spawnable"],
    ["skipped_per_profile_capped", "Skipped: profile at cap"], ["awaiting_worker", "Awaiting a worker"],
    ["auto_blocked", "Blocked by the breaker"], ["spawn_failed", "Spawn failed"],
    ["reclaimed", "Reclaimed (lease expired)"], ["crashed", "Reclaimed (executor gone)"],
    ["not_considered", "Not considered"],
  ];

  function fail(error) {
    if (error && error.status === 401) return;
    banner(String(error.message || error), "error");
  }

  function describe(item) {
    if (typeof item === "string") return item;
    const parts = [item.task_id];
    if (item.assignee) parts.push(`→ ${item.assignee}`);
    if (item.cap) parts.push(`(${item.running} of ${item.cap} running)`);
    if (item.reason) parts.push(`: ${item.reason}`);
    if (item.error) parts.push(`: ${item.error}`);
    return parts.join(" ");
  }

  function link(item) {
    const id = typeof item === "string" ? item : item.task_id;
    return el("li", {}, el("a", { href: `/tasks/${encodeURIComponent(id)}`, text: describe(item) }));
  }

  function buckets(result) {
    const nodes = [];
    const empty = [];
    for (const [key, title] of BUCKETS) {
      const items = result[key] || [];
      if (items.length) nodes.push(el("div", { class: "bucket", dataset: { bucket: key } },
        el("h3", { text: `${title} (${items.length})` }), el("ul", {}, items.map(link))));
      else empty.push(title.toLowerCase());
    }
    if (result.stopped_reason) nodes.push(el("p", { class: "error", text: `Stopped: ${result.stopped_reason}` }));
    if (!nodes.length) nodes.push(el("p", { class: "empty", text: "Nothing to do." }));
    nodes.push(el("p", { class: "muted", text: `Empty: ${empty.join(", ")}` }));
    return nodes;
  }

  function showLast(last) {
    document.getElementById("last-tick-time").textContent = last ? `${time(new Date(last.ran_at * 1000).toISOString())} by ${last.by}` : "";
    document.getElementById("last-tick").replaceChildren(...(last ? buckets(last.result)
      : [el("p", { class: "empty", text: "No tick has been run from this dashboard yet." })]));
  }

  async function preview() {
    const board = document.getElementById("board").value.trim();
    const data = await api(`/api/dispatcher?board_id=${encodeURIComponent(board)}`);
    const result = document.getElementById("preview-result");
    if (result && data.preview) result.replaceChildren(...buckets(data.preview),
      el("p", { class: "muted", text: `planned in ${(data.duration * 1000).toFixed(1)} ms; nothing was written` }));
    const rows = data.ready.map((task) => el("tr", {},
      el("td", {}, el("a", { href: `/tasks/${encodeURIComponent(task.task_id)}`, text: task.title })),
      el("td", { text: task.assignee || "unassigned" }),
      el("td", { text: String(task.priority) }),
      el("td", { text: (task.readiness && (task.readiness.message || task.readiness.reason)) || "" })));
    document.querySelector("#ready-reasons tbody").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "4", class: "empty", text: "no ready tasks" }))]));
    showLast(data.last_tick);
  }

  document.getElementById("preview").addEventListener("click", () => preview().catch(fail));
  const tick = document.getElementById("tick");
  if (tick) tick.addEventListener("click", async () => {
    try {
      const board = document.getElementById("board").value.trim();
      const data = await api("/api/dispatcher/tick", { method: "POST", body: { board_id: board } });
      showLast(data.last_tick);
      await preview();
    } catch (error) { fail(error); }
  });
  preview().catch(fail);
})();
