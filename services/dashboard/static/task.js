// Task page: fields, dependencies, runs, timeline and the live output.
"use strict";

(() => {
  const { api, stream, el, banner, time, liveIndicator } = Longshore;
  const root = document.getElementById("task-page");
  const taskId = root.dataset.task;
  let output = null;
  let outputRun = null;
  let eventStream = null;
  let reloadTimer = null;
  let currentRunId = null;

  function fail(error) {
    if (error && error.status === 401) return;
    banner(String(error.message || error), "error");
  }

  function clock(timestamp) {
    return timestamp ? new Date(timestamp).toLocaleTimeString() : "";
  }

  function field(name, value) {
    return [el("dt", { text: name }), el("dd", { text: value === undefined || value === "" ? "—" : value })];
  }

  function eventItem(event) {
    const payload = event.payload && Object.keys(event.payload).length ? JSON.stringify(event.payload) : "";
    return el("li", { dataset: { eventId: String(event.event_id) } },
      el("span", { class: "muted", text: time(event.create_time) }),
      el("span", { class: "kind", text: event.kind }),
      el("span", { class: "muted", text: event.source }),
      payload ? el("span", { class: "payload", text: payload }) : null);
  }

  function render(data) {
    const task = data.task;
    document.getElementById("task-title").textContent = task.title;
    document.title = `${task.title} · Longshore`;
    const pill = document.getElementById("task-status");
    pill.textContent = task.status;
    pill.className = `pill ${task.status}`;
    const readiness = task.readiness && (task.readiness.message || task.readiness.reason);
    document.getElementById("task-fields").replaceChildren(...[
      field("id", task.task_id),
      field("board", task.board_id),
      field("assignee", task.assignee || "unassigned"),
      field("priority", String(task.priority)),
      field("why", readiness ? String(readiness).replaceAll("_", " ") : ""),
      field("blocked reason", task.blocked_reason),
      field("command", (task.command || []).join(" ")),
      field("image", task.image),
      field("env", (task.env || []).join(", ")),
      field("failures", String(task.failure_count)),
      field("current run", task.current_run_id),
      field("trace", task.trace_id),
      field("created", time(task.create_time)),
      field("updated", time(task.update_time)),
      field("description", task.description),
    ].flat());
    const deps = document.getElementById("task-deps");
    const waiting = new Set((task.readiness && task.readiness.waiting_on) || []);
    deps.replaceChildren(...(task.parent_ids.length ? task.parent_ids.map((id) => el("li", {},
      el("a", { href: `/tasks/${encodeURIComponent(id)}`, text: id }),
      waiting.has(id) ? el("span", { class: "muted", text: " (waiting)" }) : el("span", { class: "muted", text: " (done)" })))
      : [el("li", { class: "empty", text: "no dependencies" })]));
    const rows = data.runs.map((run) => el("tr", { dataset: { runId: run.run_id } },
      el("td", { text: run.run_id.slice(0, 12), title: run.run_id }),
      el("td", {}, el("span", { class: `pill ${run.status}`, text: run.status })),
      el("td", { text: run.profile }),
      el("td", { text: run.sandbox_id ? run.sandbox_id.slice(0, 12) : "—", title: run.sandbox_id }),
      el("td", { text: run.status === "running" ? "" : String(run.exit_code), title: run.error }),
      el("td", { text: clock(run.start_time), title: run.start_time || "" }),
      el("td", { text: clock(run.end_time), title: run.end_time || "" })));
    document.querySelector("#task-runs tbody").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "7", class: "empty", text: "no runs yet" }))]));
    document.getElementById("task-events").replaceChildren(...data.events.map(eventItem));
    if (task.current_run_id !== currentRunId) {
      currentRunId = task.current_run_id;
      followOutput();
    }
  }

  function followOutput() {
    if (output) output.close();
    const pre = document.getElementById("task-output");
    const label = document.getElementById("output-run");
    outputRun = null;
    pre.textContent = "";
    output = stream(`/api/tasks/${encodeURIComponent(taskId)}/output`, (name, data) => {
      if (name === "output") {
        if (data.run_id !== outputRun) { outputRun = data.run_id; pre.textContent = ""; label.textContent = data.run_id; }
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.append(data.text);
        if (atBottom) pre.scrollTop = pre.scrollHeight;
        return data.eof ? "stop" : undefined;
      }
      if (name === "end") return "stop";
      if (name === "error") {
        if (!pre.textContent) pre.textContent = data.code === "NOT_FOUND" ? "(no output yet)" : data.message;
        return "stop";
      }
      return undefined;
    });
  }

  async function load() {
    const data = await api(`/api/tasks/${encodeURIComponent(taskId)}`);
    render(data);
    return data;
  }

  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => load().catch(fail), 200);
  }

  async function init() {
    try {
      const data = await load();
      eventStream = stream(`/api/events?task_id=${encodeURIComponent(taskId)}&since=${data.last_event_id}`, (name, event) => {
        if (name === "task") {
          const list = document.getElementById("task-events");
          if (!list.querySelector(`[data-event-id="${event.event_id}"]`)) list.append(eventItem(event));
          scheduleReload();
        }
        return undefined;
      }, liveIndicator());
    } catch (error) { fail(error); }
  }

  window.addEventListener("beforeunload", () => {
    if (output) output.close();
    if (eventStream) eventStream.close();
  });
  init();
})();
