// Status page: versions, backends' health, auth mode, the gateway's traffic.
"use strict";

(() => {
  const { api, el, banner } = Longshore;

  function pairs(target, entries) {
    document.getElementById(target).replaceChildren(...entries.flatMap(([k, v]) =>
      [el("dt", { text: k }), el("dd", { text: v === undefined || v === "" ? "—" : String(v) })]));
  }

  // The gateway's headline figures (GetStatus.traffic); empty when unreachable.
  function traffic(t) {
    if (!t) return [["calls per second", ""]];
    const errors = Object.entries(t.errors_by_code || {}).map(([code, n]) => `${code} ${n}`);
    return [
      ["calls per second", Number(t.calls_per_second || 0).toFixed(2)],
      ["calls", `${t.calls || 0} in ${Number(t.window_seconds || 0).toFixed(0)} s`],
      ["p50 latency", `${Number(t.p50_latency_ms || 0).toFixed(1)} ms`],
      ["p99 latency", `${Number(t.p99_latency_ms || 0).toFixed(1)} ms`],
      ["errors", `${t.errors || 0}${errors.length ? ` (${errors.join(", ")})` : ""}`],
      ["calls in flight", t.in_flight_calls || 0],
      ["held streams", t.held_streams || 0],
    ];
  }

  async function load() {
    const data = await api("/api/status/detail");
    const gw = data.gateway;
    pairs("versions", [
      ["dashboard", data.dashboard.version],
      ["gateway", gw.version || (gw.reachable ? "" : "unreachable")],
      ["gateway address", gw.address],
      ["deployment", gw.deployment],
      ["checked", gw.check_time],
      ["error", gw.error],
    ]);
    pairs("auth", [
      ["mode", data.auth.mode],
      ["login methods", data.auth.methods.join(", ") || "none needed"],
      ["signed in as", data.auth.user],
      ["via", data.auth.via],
      ["your key's scopes", (gw.scopes || []).join(", ")],
    ]);
    pairs("traffic", traffic(gw.traffic));
    const rows = (gw.backends || []).map((b) => el("tr", {},
      el("td", { text: b.name }),
      el("td", {}, el("span", { class: `pill ${b.health}`, text: b.health.replaceAll("_", " ") }),
        // Why a backend is not serving, right next to it (e.g. "docker engine unreachable: …").
        b.detail ? el("span", { class: b.health === "serving" ? "muted" : "why", text: ` ${b.detail}` }) : null),
      el("td", { text: b.version }),
      el("td", { text: b.address }),
      el("td", { text: `${Number(b.latency_ms || 0).toFixed(1)} ms` })));
    document.querySelector("#backends tbody").replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "5", class: "empty", text: "no backends reported" }))]));
  }

  load().catch((error) => { if (error.status !== 401) banner(String(error.message), "error"); });
})();
