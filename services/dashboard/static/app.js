// Longshore dashboard: shared helpers. One fetch wrapper (`api`) and one
// event-stream reader (`stream`) carry the page token and apply the one 401
// policy: go to `login_url` once; never navigate again within GUARD_MS (so a
// page can never reload in a loop, in loopback mode or any other).
"use strict";

const Longshore = (() => {
  const meta = (name) => {
    const tag = document.querySelector(`meta[name="${name}"]`);
    return tag ? tag.content : "";
  };
  const token = meta("longshore-token");
  const mode = meta("longshore-mode");
  // Whether the logged-in key may write / run operator actions. Presentation
  // only: the server renders no write controls without it, and the gateway
  // refuses a write from a read key whatever the page does.
  const canWrite = meta("longshore-can-write") === "1";
  const canAdmin = meta("longshore-can-admin") === "1";
  const GUARD_KEY = "longshore.authNavigationAt";
  const GUARD_MS = 30000;
  let navigating = false;

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.message || body.error)) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function banner(text, kind, link) {
    const box = document.getElementById("banner");
    if (!box) return;
    box.replaceChildren(text);
    if (link) box.append(" ", el("a", { href: link.href, text: link.text }));
    box.className = `banner ${kind || "info"}`;
    box.hidden = !text;
  }

  function safeLoginUrl(body) {
    const url = body && typeof body.login_url === "string" ? body.login_url : "";
    if (url.startsWith("/") && !url.startsWith("//")) return url;
    return "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  // The one place that reacts to a 401.
  function unauthorized(body) {
    if (navigating) return;
    const target = safeLoginUrl(body);
    const last = Number(sessionStorage.getItem(GUARD_KEY) || 0);
    if (Date.now() - last < GUARD_MS) {
      const text = mode === "loopback"
        ? "The dashboard refused this page's token (was it restarted?)."
        : "Your session has ended.";
      banner(text, "error", { href: target, text: mode === "loopback" ? "Reload" : "Sign in" });
      return;
    }
    sessionStorage.setItem(GUARD_KEY, String(Date.now()));
    navigating = true;
    location.assign(target);
  }

  function headers(extra) {
    const result = Object.assign({ Accept: "application/json" }, extra || {});
    if (token) result["X-Longshore-Token"] = token;
    return result;
  }

  async function api(path, options) {
    const opts = options || {};
    const init = { method: opts.method || "GET", headers: headers(), credentials: "same-origin" };
    if (opts.body !== undefined) {
      init.body = JSON.stringify(opts.body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (response.status === 401) {
      unauthorized(body);
      throw new ApiError(401, body);
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  // Server-sent events over fetch (so the token header can be sent), with
  // resume from the last event id. `onEvent(name, data)` may return "stop".
  function stream(path, onEvent, onStatus) {
    let stopped = false;
    let controller = null;
    let lastId = "";
    const status = onStatus || (() => {});

    function dispatch(frame) {
      let name = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = value;
        else if (field === "id") lastId = value;
        else if (field === "data") data.push(value);
      }
      if (!data.length) return;
      let parsed = null;
      try { parsed = JSON.parse(data.join("\n")); } catch (_) { return; }
      if (onEvent(name, parsed) === "stop") stop();
    }

    function stop() {
      stopped = true;
      if (controller) controller.abort();
    }

    async function run() {
      while (!stopped) {
        controller = new AbortController();
        const extra = { Accept: "text/event-stream" };
        if (lastId) extra["Last-Event-ID"] = lastId;
        try {
          const response = await fetch(path, {
            headers: headers(extra), credentials: "same-origin", signal: controller.signal,
          });
          if (response.status === 401) {
            let body = null;
            try { body = await response.json(); } catch (_) { body = null; }
            status("signed out");
            unauthorized(body);
            return;
          }
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          status("live");
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          while (!stopped) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let end;
            while (!stopped && (end = buffer.indexOf("\n\n")) >= 0) {
              dispatch(buffer.slice(0, end));
              buffer = buffer.slice(end + 2);
            }
          }
        } catch (_) {
          if (stopped) return;
        }
        if (stopped) return;
        status("reconnecting…");
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }

    run();
    return { close: stop };
  }

  function age(timestamp) {
    if (!timestamp) return "";
    const seconds = Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000);
    if (seconds < 60) return `${Math.floor(seconds)}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
    return `${Math.floor(seconds / 86400)}d`;
  }

  function time(timestamp) {
    return timestamp ? new Date(timestamp).toLocaleString() : "";
  }

  function liveIndicator() {
    const node = document.getElementById("live");
    return (text) => {
      if (!node) return;
      node.textContent = text;
      node.className = `live ${text === "live" ? "on" : "off"}`;
    };
  }

  function markNav() {
    const page = document.body.dataset.page;
    for (const link of document.querySelectorAll("[data-nav]")) {
      if (link.dataset.nav === page) link.classList.add("active");
    }
  }

  document.addEventListener("DOMContentLoaded", markNav);

  return { api, stream, el, banner, age, time, liveIndicator, ApiError, mode, canWrite, canAdmin };
})();
