// modeld dashboard: refreshes the server-rendered sections, draws the plots in SVG, and calls
// the JSON API for deploy and rollback. No dependencies and no network but the daemon itself.
(() => {
  "use strict";

  const root = document.getElementById("modeld");
  const tokenRequired = root.dataset.tokenRequired === "true";
  // ?refresh=SECONDS overrides the daemon's default refresh interval (at least one second)
  const asked = Number(new URLSearchParams(window.location.search).get("refresh"));
  const refreshMs = asked >= 1 ? asked * 1000 : Number(root.dataset.refreshMs) || 3000;
  const TOKEN_KEY = "modeld.token";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 480, H = 220, M = { l: 46, r: 12, t: 12, b: 26 };
  const COLORS = ["#2364d2", "#d97706", "#1f8a4c", "#7c3aed", "#c53030", "#0e7490", "#9d174d"];

  let busy = false;
  let tokenWanted = false; // a token was refused or not given: wait for the "API token" button
  let driftAvailable = null; // null: not asked yet; false: the daemon has no drift API
  let lastSeries = null;

  // ------------------------------------------------------------------ token and requests

  const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function askToken(why) {
    const given = window.prompt(`${why}\n\nAPI token (kept in this browser tab only):`, "");
    if (given === null) return false;
    sessionStorage.setItem(TOKEN_KEY, given.trim());
    tokenWanted = false;
    return true;
  }

  async function api(method, path, body) {
    for (let attempt = 0; attempt < 2; attempt += 1) {
      // X-Modeld-Client: the API refuses state-changing requests without it (cross-site)
      const headers = { Accept: "application/json", "X-Modeld-Client": "dashboard" };
      const token = getToken();
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const response = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (response.status === 401) {
        document.getElementById("token-button").hidden = false;
        // another request may have asked for the token meanwhile: then just retry with it
        const retry = attempt === 0 && !tokenWanted && (getToken() !== token
          || askToken(token ? "The token was refused." : "This daemon requires a token."));
        if (retry) continue;
        tokenWanted = true;
        throw new ApiError(401, "the API token is missing or wrong; use the API token button");
      }
      let data = null;
      try { data = await response.json(); } catch (_) { data = null; }
      if (!response.ok) {
        const detail = data && data.detail ? data.detail : response.statusText;
        throw new ApiError(response.status, detail);
      }
      return data;
    }
    throw new ApiError(401, "the API token is missing or wrong; use the API token button");
  }

  class ApiError extends Error {
    constructor(status, detail) { super(`${detail} (HTTP ${status})`); this.status = status; }
  }

  async function optional(path) {
    try { return await api("GET", path); } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return undefined;
      throw err;
    }
  }

  // ------------------------------------------------------------------ messages

  function banner(text, kind) {
    const el = document.getElementById("banner");
    if (!text) { el.hidden = true; el.textContent = ""; return; }
    el.hidden = false;
    el.className = kind === "info" ? "info" : "";
    el.textContent = text;
  }

  function setRefreshState(text) { document.getElementById("refresh-state").textContent = text; }

  // ------------------------------------------------------------------ sections

  function applySections(data) {
    for (const [name, markup] of Object.entries(data.sections || {})) {
      const el = root.querySelector(`[data-section="${name}"]`);
      if (!el) continue;
      // keep what the reader opened (validation details) across the redraw
      const open = new Set(Array.from(el.querySelectorAll("tr[data-version] details[open]"))
        .map((d) => d.closest("tr").dataset.version));
      el.innerHTML = markup;
      for (const version of open) {
        const row = el.querySelector(`tr[data-version="${CSS.escape(version)}"] details`);
        if (row) row.open = true;
      }
    }
  }

  // ------------------------------------------------------------------ plotting

  const el = (name, attrs, text) => {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  };

  function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

  function empty(svg, message) {
    clear(svg);
    legend(svg, []);
    svg.dataset.points = "0";
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
      message));
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
    return ticks;
  }

  const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19);

  function frame(svg, x0, x1, y0, y1, fmtX, fmtY) {
    const sx = (x) => M.l + ((x - x0) / (x1 - x0 || 1)) * (W - M.l - M.r);
    const sy = (y) => H - M.b - ((y - y0) / (y1 - y0 || 1)) * (H - M.t - M.b);
    for (const v of niceTicks(y0, y1, 4)) {
      svg.appendChild(el("line", { x1: M.l, x2: W - M.r, y1: sy(v), y2: sy(v), class: "grid" }));
      svg.appendChild(el("text", { x: M.l - 5, y: sy(v) + 3.5, "text-anchor": "end" }, fmtY(v)));
    }
    const xt = fmtX === clock ? timeTicks(x0, x1) : niceTicks(x0, x1, 5);
    for (const v of xt) {
      svg.appendChild(el("text", { x: sx(v), y: H - 8, "text-anchor": "middle" }, fmtX(v)));
    }
    svg.appendChild(el("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis" }));
    svg.appendChild(el("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: "axis" }));
    return { sx, sy };
  }

  function timeTicks(x0, x1) {
    const span = x1 - x0;
    const steps = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    const step = steps.find((s) => span / s <= 5) || 86400;
    const ticks = [];
    for (let v = Math.ceil(x0 / step) * step; v <= x1; v += step) ticks.push(v);
    return ticks;
  }

  function markers(svg, sx, items, cls, x0, x1) {
    let lastX = -Infinity;
    let lastLabel = "";
    for (const m of [...items].sort((a, b) => a.t - b.t)) {
      if (m.t < x0 || m.t > x1) continue;
      const x = sx(m.t);
      svg.appendChild(el("line", { x1: x, x2: x, y1: M.t, y2: H - M.b, class: cls }));
      // one label per run of the same marker, never on top of the previous label
      if (m.label && m.label !== lastLabel && x - lastX > 110) {
        lastLabel = m.label;
        // labels sit at the bottom of the plot, clear of the lines that matter most
        const anchor = x > W - 110 ? "end" : "start";
        svg.appendChild(el("text", {
          x: anchor === "end" ? x - 3 : x + 3, y: H - M.b - 4 - (cls === "alarm" ? 11 : 0),
          "text-anchor": anchor, class: `${cls}-label`,
        }, m.label));
        lastX = x;
      }
    }
  }

  // series: [{label, color, points: [[t, y], ...]}]
  function lineChart(svg, series, opts) {
    const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
    if (!all.length) { empty(svg, opts.empty); return; }
    clear(svg);
    const now = opts.now || Math.max(...all.map((p) => p[0]));
    let x0 = Math.min(...all.map((p) => p[0]));
    const x1 = Math.max(now, x0 + 10);
    x0 = Math.max(x0, x1 - (opts.span || Infinity));
    const ys = all.filter((p) => p[0] >= x0).map((p) => p[1]);
    const y0 = opts.yMin !== undefined ? opts.yMin : Math.min(...ys);
    let y1 = Math.max(...ys, opts.yFloor || 0);
    if (!(y1 > y0)) y1 = y0 + 1;
    y1 += (y1 - y0) * 0.08;
    const { sx, sy } = frame(svg, x0, x1, y0, y1, clock, opts.fmtY);
    markers(svg, sx, opts.swaps || [], "swap", x0, x1);
    markers(svg, sx, opts.alarms || [], "alarm", x0, x1);
    let count = 0;
    series.forEach((s, i) => {
      const pts = s.points.filter((p) => p[0] >= x0 && Number.isFinite(p[1]));
      if (!pts.length) return;
      count += pts.length;
      const color = s.color || COLORS[i % COLORS.length];
      const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`)
        .join("");
      svg.appendChild(el("path", { d, fill: "none", stroke: color, "stroke-width": 1.6 }));
      if (pts.length < 40) {
        for (const p of pts) {
          svg.appendChild(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2, fill: color }));
        }
      }
    });
    legend(svg, series.map((s, i) => ({ label: s.label, color: s.color || COLORS[i % COLORS.length],
      shown: s.points.length > 0 })).filter((s) => s.label && s.shown));
    svg.dataset.points = String(count);
  }

  // The legend is HTML under the plot, so that it never hides a line.
  function legend(svg, items) {
    const box = svg.parentElement.querySelector(".legend");
    if (!box) return;
    box.replaceChildren(...items.map((item) => {
      const span = document.createElement("span");
      const key = document.createElement("i");
      key.style.background = item.color;
      span.append(key, item.label);
      return span;
    }));
  }

  function histogram(svg, scores) {
    const edges = scores.edges || [];
    const live = scores.live || [];
    const ref = scores.reference || [];
    const caption = document.getElementById("scores-caption");
    if (edges.length < 2 || (!live.length && !ref.length)) {
      caption.textContent = "";
      empty(svg, scores.version ? `no scores yet for ${scores.version}` : "no model deployed");
      return;
    }
    clear(svg);
    const log = scores.scale === "log";
    const pos = log ? (v) => Math.log10(v) : (v) => v;
    const x0 = pos(edges[0]), x1 = pos(edges[edges.length - 1]);
    const y1 = Math.max(...live, ...ref) * 1.1 || 1;
    const num = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1)
      : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3));
    const fmtX = log ? (v) => num(10 ** v) : num;
    const { sx, sy } = frame(svg, x0, x1, 0, y1, fmtX, (v) => `${(v * 100).toFixed(0)} %`);
    const step = (values, color, fill) => {
      if (!values.length) return;
      let d = `M${sx(x0)},${sy(0)}`;
      values.forEach((v, i) => {
        d += `L${sx(pos(edges[i]))},${sy(v)}L${sx(pos(edges[i + 1]))},${sy(v)}`;
      });
      d += `L${sx(x1)},${sy(0)}`;
      svg.appendChild(el("path", { d, fill, stroke: color, "stroke-width": 1.5 }));
    };
    step(ref, "#9aa5b1", "rgba(154,165,177,.25)");
    step(live, "#2364d2", "rgba(35,100,210,.12)");
    svg.appendChild(el("text", { x: W - M.r, y: M.t + 8, "text-anchor": "end" },
      `score${log ? " (log scale)" : ""}: higher is more anomalous`));
    svg.dataset.points = String(live.filter((v) => v > 0).length);
    caption.textContent = `${scores.version}: ${scores.live_count} recent records` +
      (scores.clipped ? ` (${scores.clipped} beyond the range, in the end bins)` : "") +
      (ref.length ? `, ${scores.reference_count} reference` : ", no reference in the artifact");
  }

  // ------------------------------------------------------------------ the series plots

  function drawSeries(series) {
    lastSeries = series;
    const versions = Object.entries(series.versions || {});
    const swaps = (series.swaps || []).map((s) => ({ t: s.t, label: `→ ${s.to || "none"}` }));
    const rate = versions.map(([v, data]) => ({
      label: v, points: data.points.map((p) => [p.t, p.anomaly_rate === null ? NaN
        : p.anomaly_rate * 100]),
    }));
    lineChart(root.querySelector('[data-plot="anomaly-rate"]'), rate, {
      now: series.now, span: 3600, yMin: 0, yFloor: 1, swaps,
      fmtY: (v) => `${v.toFixed(v < 10 ? 1 : 0)} %`, empty: "no records scored yet",
    });
    const p50 = [], p99 = [];
    for (const [, data] of versions) {
      for (const p of data.points) {
        p50.push([p.t, p.latency_p50_ms === null ? NaN : p.latency_p50_ms]);
        p99.push([p.t, p.latency_p99_ms === null ? NaN : p.latency_p99_ms]);
      }
    }
    p50.sort((a, b) => a[0] - b[0]); p99.sort((a, b) => a[0] - b[0]);
    lineChart(root.querySelector('[data-plot="latency"]'), [
      { label: "p50", color: "#2364d2", points: p50 },
      { label: "p99", color: "#d97706", points: p99 },
    ], { now: series.now, span: 3600, yMin: 0, swaps, fmtY: (v) => `${v.toFixed(v < 10 ? 1 : 0)} ms`,
      empty: "no requests yet" });
    histogram(root.querySelector('[data-plot="scores"]'), series.scores || {});
  }

  // ------------------------------------------------------------------ drift

  const epoch = (v) => {
    if (typeof v === "number") return v > 1e12 ? v / 1000 : v;
    if (typeof v === "string") { const ms = Date.parse(v); return Number.isNaN(ms) ? NaN : ms / 1000; }
    return NaN;
  };

  // The drift API may answer a list, {history: [...]}, or {version: [...]}; each evaluation
  // has a time (evaluated_at or at) and signals (a list, or an object by name).
  function evaluations(data) {
    if (!data) return [];
    if (Array.isArray(data)) {
      return data.flatMap((item) => (item && Array.isArray(item.reports || item.history)
        ? evaluations(item.reports || item.history).map((e) => ({ version: item.version, ...e }))
        : [item]));
    }
    for (const key of ["history", "evaluations", "reports", "items", "versions"]) {
      if (data[key]) return evaluations(data[key]);
    }
    if (data.signals) return [data];
    return Object.entries(data).flatMap(([version, value]) => (typeof value === "object"
      ? evaluations(value).map((e) => ({ version, ...e })) : []));
  }

  function signalsOf(report) {
    const s = report.signals || [];
    return Array.isArray(s) ? s : Object.entries(s).map(([name, v]) => ({ name, ...v }));
  }

  function drawDrift(history, current, deployed) {
    const svg = root.querySelector('[data-plot="drift"]');
    if (history === undefined && current === undefined) {
      empty(svg, "drift monitoring is not available in this daemon");
      document.getElementById("drift-now").innerHTML = "";
      return;
    }
    const evals = evaluations(history).concat(evaluations(current))
      .filter((e) => !deployed || !e.version || e.version === deployed);
    const bySignal = new Map();
    const alarms = [];
    const seen = new Set();
    for (const e of evals) {
      const t = epoch(e.evaluated_at ?? e.at ?? e.t ?? e.time);
      for (const s of signalsOf(e)) {
        const name = s.name || s.signal;
        const stat = s.statistic ?? s.effect_size;
        if (!name || !Number.isFinite(t) || typeof stat !== "number") continue;
        const key = `${name}@${t}`;
        if (seen.has(key)) continue;
        seen.add(key);
        if (!bySignal.has(name)) bySignal.set(name, []);
        bySignal.get(name).push([t, stat]);
      }
      for (const a of e.alarms || []) {
        const at = epoch(a.at ?? a.t);
        if (Number.isFinite(at)) alarms.push({ t: at, label: `⚠ ${a.signal || "drift"}` });
      }
      const last = e.last_alarm_at ?? e.last_alarm;
      if (last && typeof last !== "object" && Number.isFinite(epoch(last))) {
        alarms.push({ t: epoch(last), label: "⚠ drift" });
      }
    }
    const unique = new Map(alarms.map((a) => [`${a.t}`, a]));
    const series = Array.from(bySignal.entries())
      .map(([label, points]) => ({ label, points: points.sort((a, b) => a[0] - b[0]) }))
      .sort((a, b) => Math.max(...b.points.map((p) => p[1])) - Math.max(...a.points.map((p) => p[1])))
      .slice(0, 6);
    lineChart(svg, series, {
      now: lastSeries ? lastSeries.now : undefined, span: 3600, yMin: 0,
      alarms: Array.from(unique.values()), fmtY: (v) => v.toFixed(2),
      empty: "no drift evaluation yet",
    });
    driftTable(evaluations(current).filter((e) => !deployed || !e.version || e.version === deployed));
  }

  function driftTable(reports) {
    const box = document.getElementById("drift-now");
    const report = reports[reports.length - 1];
    if (!report) { box.innerHTML = ""; return; }
    const rows = signalsOf(report)
      .filter((s) => s.status && s.status !== "ok")
      .slice(0, 12);
    const fmt = (v) => (typeof v === "number" ? (Math.abs(v) < 0.001 && v !== 0 ? v.toExponential(1)
      : v.toFixed(3)) : "-");
    const esc = (v) => String(v ?? "-").replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
    const head = `<h3>Drift now${report.version ? ` (${esc(report.version)})` : ""}: ` +
      `<span class="pill ${report.status === "drift" ? "bad" : report.status === "ok" ? "good"
        : "warn"}">${esc(report.status || "unknown")}</span></h3>`;
    if (!rows.length) { box.innerHTML = head; return; }
    box.innerHTML = head + "<table><thead><tr><th>Signal</th><th>Status</th><th>Statistic</th>" +
      "<th>p-value</th><th>Effect size</th><th>Window</th><th>Reference</th></tr></thead><tbody>" +
      rows.map((s) => `<tr><td>${esc(s.name || s.signal)}</td><td>${esc(s.status)}</td>` +
        `<td>${fmt(s.statistic)}</td><td>${fmt(s.p_adjusted ?? s.p_value)}</td>` +
        `<td>${fmt(s.effect_size)}</td><td>${esc(s.window_size)}</td>` +
        `<td>${esc(s.reference_source)}</td></tr>`).join("") + "</tbody></table>";
  }

  // ------------------------------------------------------------------ refresh loop

  async function refresh() {
    if (busy) return;
    if (tokenWanted) {
      setRefreshState("paused: no valid API token");
      banner("This daemon needs its API token: use the API token button.");
      return;
    }
    busy = true;
    try {
      const [sections, series] = await Promise.all([
        api("GET", "/api/v1/dashboard/sections"),
        api("GET", "/api/v1/dashboard/series"),
      ]);
      applySections(sections);
      drawSeries(series);
      let history, current;
      if (driftAvailable !== false) {
        [history, current] = await Promise.all([
          optional("/api/v1/drift/history"), optional("/api/v1/drift"),
        ]);
        driftAvailable = history !== undefined || current !== undefined;
      }
      drawDrift(history, current, series.deployed_version);
      setRefreshState(`updated ${new Date().toISOString().slice(11, 19)} UTC`);
      if (document.getElementById("banner").className !== "info") banner("");
    } catch (err) {
      setRefreshState("refresh failed; retrying");
      banner(err instanceof ApiError ? `The daemon refused: ${err.message}`
        : `The daemon is not reachable (${err.message}); retrying.`);
    } finally {
      busy = false;
    }
  }

  async function act(button) {
    const version = button.dataset.version;
    const action = button.dataset.action;
    const questions = {
      deploy: `Deploy ${version}? It serves every scoring request from the next one on.`,
      rollback: `Roll back from ${version} to the previously deployed version?`,
      promote: `Promote the candidate ${version}? It serves every scoring request from the next one on.`,
      discard: `Discard the candidate ${version}? Its trial ends; it stays an available version.`,
    };
    const question = questions[action];
    if (!window.confirm(question)) return;
    if ((tokenWanted || (tokenRequired && !getToken()))
        && !askToken("Deploying needs the API token.")) return;
    button.disabled = true;
    try {
      const paths = {
        deploy: `/api/v1/models/${encodeURIComponent(version)}/deploy`,
        rollback: "/api/v1/models/rollback",
        promote: "/api/v1/shadow/promote",
        discard: "/api/v1/shadow/discard",
      };
      const shadow = action === "promote" || action === "discard";
      const result = await api("POST", paths[action], shadow ? { version } : undefined);
      banner((action === "discard" ? `Discarded ${result.discarded}; serving ` : "Now serving ")
        + `${result.deployed_version}` +
        (result.fallback_version ? ` (fallback ${result.fallback_version})` : ""), "info");
      setTimeout(() => { if (document.getElementById("banner").className === "info") banner(""); },
        8000);
    } catch (err) {
      banner(`${action[0].toUpperCase()}${action.slice(1)} refused: ${err.message}`);
    } finally {
      button.disabled = false;
      await refresh();
    }
  }

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) act(button);
  });
  document.getElementById("token-button").addEventListener("click", () => {
    if (askToken("Enter the API token.")) refresh();
  });

  async function loop() {
    await refresh();
    setTimeout(loop, document.hidden ? refreshMs * 4 : refreshMs);
  }

  if (tokenRequired) {
    document.getElementById("token-button").hidden = false;
    if (!getToken() && !askToken("This daemon requires an API token.")) tokenWanted = true;
  }
  loop();
})();
