// Sandboxes page: the labelled containers, reaper preview and reap.
"use strict";

(() => {
  const { api, el, banner, age } = Longshore;
  const COLUMNS = 10;

  // "4m (pause)": what is left of a lease and what its end does; "expired"
  // once past (the manager acts on its next sweep).
  function lease(s) {
    if (!s.lease_expire_time) return "—";
    const left = (Date.parse(s.lease_expire_time) - Date.now()) / 1000;
    const action = s.lease_expiry && s.lease_expiry !== "unspecified" ? ` (${s.lease_expiry})` : "";
    if (left <= 0) return `expired${action}`;
    const text = left < 60 ? `${Math.floor(left)}s` : left < 3600 ? `${Math.floor(left / 60)}m`
      : left < 86400 ? `${Math.floor(left / 3600)}h` : `${Math.floor(left / 86400)}d`;
    return `${text}${action}`;
  }
  const REFRESH_MS = 15000;

  function fail(error) {
    if (error && error.status === 401) return;
    banner(String(error.message || error), "error");
  }

  async function load() {
    const data = await api("/api/sandboxes");
    const rows = data.sandboxes.map((s) => el("tr", { dataset: { sandboxId: s.sandbox_id } },
      el("td", { text: s.name, title: s.sandbox_id }),
      el("td", {}, s.task_id ? el("a", { href: `/tasks/${encodeURIComponent(s.task_id)}`, text: s.task_id }) : "—"),
      el("td", { text: s.profile }),
      el("td", {}, el("span", { class: `pill ${s.state}`, text: s.state })),
      el("td", { class: "lease", text: lease(s), title: s.lease_expire_time || "" }),
      el("td", { class: "pool", text: s.warm_pool ? `warm: ${s.warm_pool}` : "—" }),
      el("td", { text: age(s.create_time), title: s.create_time || "" }),
      el("td", { text: s.persist ? "yes" : "no" }),
      el("td", { text: s.restarted ? "yes" : "no" }),
      el("td", { text: s.image })));
    document.querySelector("#sandboxes tbody").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: String(COLUMNS), class: "empty", text: "no sandboxes" }))]));
  }

  function decisions(title, items) {
    return el("div", { class: "bucket" }, el("h3", { text: `${title} (${items.length})` }),
      items.length ? el("ul", {}, items.map((d) => el("li", {},
        el("code", { text: d.name || d.sandbox_id.slice(0, 12) }), ` ${d.profile} ${d.task_id}: `,
        el("span", { class: "muted", text: d.reason }))))
        : el("p", { class: "empty", text: "none" }));
  }

  function showReport(report) {
    const box = document.getElementById("reap-result");
    box.replaceChildren(
      el("p", { class: "muted", text: `${report.dry_run ? "Dry run" : "Reaped"}; max age ${report.max_age || "default"}` }),
      decisions(report.dry_run ? "Would remove" : "Removed", report.removed),
      decisions("Spared", report.spared),
      decisions("Failed", report.failed));
  }

  document.getElementById("refresh").addEventListener("click", () => load().catch(fail));
  const reapPreview = document.getElementById("reap-preview");
  const reap = document.getElementById("reap");
  if (reapPreview) reapPreview.addEventListener("click", async () => {
    try { showReport((await api("/api/sandboxes/reap-preview")).report); } catch (error) { fail(error); }
  });
  if (reap) reap.addEventListener("click", async () => {
    if (!window.confirm("Remove the exited sandboxes the reaper selects?")) return;
    try {
      showReport((await api("/api/sandboxes/reap", { method: "POST", body: {} })).report);
      await load();
    } catch (error) { fail(error); }
  });
  load().catch(fail);
  setInterval(() => { if (!document.hidden) load().catch(fail); }, REFRESH_MS);
})();
