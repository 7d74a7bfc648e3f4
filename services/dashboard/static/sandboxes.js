// Sandboxes page: the labelled containers, reaper preview and reap.
"use strict";

(() => {
  const { api, el, banner, age } = Longshore;
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
      el("td", { text: age(s.create_time), title: s.create_time || "" }),
      el("td", { text: s.persist ? "yes" : "no" }),
      el("td", { text: s.restarted ? "yes" : "no" }),
      el("td", { text: s.image })));
    document.querySelector("#sandboxes tbody").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "8", class: "empty", text: "no sandboxes" }))]));
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
