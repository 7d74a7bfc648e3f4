// Board page: columns by status, live from /api/events.
"use strict";

(() => {
  const { api, stream, el, banner, age, liveIndicator, canWrite } = Longshore;
  const root = document.getElementById("board-page");
  const boardId = root.dataset.board;
  const params = new URLSearchParams(location.search);
  let profile = params.get("profile") || "";
  let profiles = [];
  let reloadTimer = null;

  function fail(error) {
    if (error && error.status === 401) return;
    banner(String(error.message || error), "error");
  }

  async function act(taskId, verb, body) {
    try {
      await api(`/api/tasks/${encodeURIComponent(taskId)}/${verb}`, { method: "POST", body });
      banner("");
      scheduleReload(0);
    } catch (error) { fail(error); }
  }

  function card(task) {
    const meta = el("div", { class: "meta" },
      el("span", { class: "assignee", text: task.assignee || "unassigned" }),
      el("span", { title: "priority", text: `P${task.priority}` }),
      el("span", { title: task.create_time || "", text: age(task.create_time) }));
    let reason = null;
    if (task.status === "ready" && task.readiness && task.readiness.message) {
      reason = el("div", { class: "reason", text: task.readiness.message });
    } else if (task.status === "ready" && task.readiness && task.readiness.reason) {
      reason = el("div", { class: "reason", text: task.readiness.reason.replaceAll("_", " ") });
    } else if (task.status === "blocked" && task.blocked_reason) {
      reason = el("div", { class: "reason blocked", text: task.blocked_reason });
    } else if (task.status === "todo" && task.readiness && task.readiness.message) {
      reason = el("div", { class: "reason", text: task.readiness.message });
    }
    const move = el("select", {
      class: "move", "aria-label": "Move to",
      onchange: (event) => { if (event.target.value) act(task.task_id, "move", { status: event.target.value }); },
    }, el("option", { value: "", text: "Move…" }),
    task.moves.map((status) => el("option", { value: status, text: status })));
    const assign = el("select", {
      class: "assign", "aria-label": "Assign to",
      onchange: (event) => {
        if (event.target.value !== "__keep") act(task.task_id, "assign", { assignee: event.target.value });
      },
    }, el("option", { value: "__keep", text: "Assign…" }),
    el("option", { value: "", text: "(nobody)" }),
    profiles.map((p) => el("option", { value: p.name, text: p.name })));
    const actions = el("div", { class: "actions" }, move);
    if (!["running", "done", "archived"].includes(task.status)) actions.append(assign);
    if (task.status === "blocked") {
      actions.append(el("button", { class: "unblock", text: "Unblock", onclick: () => act(task.task_id, "unblock", {}) }));
    } else if (!["done", "archived"].includes(task.status)) {
      actions.append(el("button", {
        class: "block", text: "Block",
        onclick: () => {
          const why = window.prompt("Why block this task?");
          if (why) act(task.task_id, "block", { reason: why });
        },
      }));
    }
    return el("article", { class: `card ${task.status}`, dataset: { taskId: task.task_id, status: task.status } },
      el("a", { class: "title", href: `/tasks/${encodeURIComponent(task.task_id)}`, text: task.title }),
      meta, reason, canWrite ? actions : null);
  }

  async function load() {
    const query = profile ? `?assignee=${encodeURIComponent(profile)}` : "";
    const data = await api(`/api/boards/${encodeURIComponent(boardId)}/tasks${query}`);
    const columns = document.getElementById("columns");
    const nodes = data.columns.map((status) => {
      const tasks = data.tasks.filter((task) => task.status === status);
      return el("section", { class: "column", dataset: { status } },
        el("h2", {}, el("span", { text: status }), el("span", { class: "count", text: String(tasks.length) })),
        tasks.length ? tasks.map(card) : el("p", { class: "empty", text: "—" }));
    });
    columns.replaceChildren(...nodes);
  }

  function scheduleReload(delay) {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => load().catch(fail), delay === undefined ? 200 : delay);
  }

  async function init() {
    try {
      const [boards, profileData] = await Promise.all([api("/api/boards"), api("/api/profiles")]);
      profiles = profileData.profiles;
      const select = document.getElementById("board-select");
      const ids = boards.boards.map((b) => b.board_id);
      if (!ids.includes(boardId)) ids.unshift(boardId);
      select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id, selected: id === boardId })));
      select.addEventListener("change", () => { location.assign(`/boards/${encodeURIComponent(select.value)}`); });
      const filter = document.getElementById("profile-filter");
      const assignee = document.getElementById("create-assignee");
      for (const p of profiles) {
        filter.append(el("option", { value: p.name, text: p.name, selected: p.name === profile }));
        if (assignee) assignee.append(el("option", { value: p.name, text: p.name }));
      }
      filter.addEventListener("change", () => {
        profile = filter.value;
        const url = new URL(location.href);
        if (profile) url.searchParams.set("profile", profile); else url.searchParams.delete("profile");
        history.replaceState(null, "", url);
        scheduleReload(0);
      });
      await load();
    } catch (error) { fail(error); }
    const createForm = document.getElementById("create-form");
    if (createForm) createForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.target;
      const data = Object.fromEntries(new FormData(form).entries());
      data.board_id = boardId;
      data.request_id = crypto.randomUUID ? crypto.randomUUID() : String(Math.random());
      try {
        await api("/api/tasks", { method: "POST", body: data });
        form.reset();
        banner("");
        scheduleReload(0);
      } catch (error) { fail(error); }
    });
    stream(`/api/events?board_id=${encodeURIComponent(boardId)}`, (name) => {
      if (name === "hello") scheduleReload(0);
      else if (name === "task") scheduleReload();
      return undefined;
    }, liveIndicator());
  }

  init();
})();
