// kubellm ui: the run pages poll a JSON endpoint every 2 s and redraw the node table; text only
// goes in through textContent, so nothing a run wrote can become markup here.
"use strict";

const POLL_MS = 2000;

function fmtDuration(s) {
  if (s === null || s === undefined) return "-";
  const n = Math.floor(s);
  if (n >= 86400) return `${Math.floor(n / 86400)}d${String(Math.floor((n % 86400) / 3600)).padStart(2, "0")}h`;
  if (n >= 3600) return `${Math.floor(n / 3600)}h${String(Math.floor((n % 3600) / 60)).padStart(2, "0")}m`;
  if (n >= 60) return `${Math.floor(n / 60)}m${String(n % 60).padStart(2, "0")}s`;
  return `${Number(s).toFixed(1)}s`;
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text === null || text === undefined ? "" : String(text);
  return td;
}

function phaseCell(phase, extra) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = `phase ${phase}`;
  span.textContent = phase + (extra || "");
  td.appendChild(span);
  return td;
}

function linkCell(text, cls, data) {
  const td = document.createElement("td");
  const a = document.createElement("a");
  a.href = "#log";
  a.className = cls;
  a.textContent = text;
  Object.assign(a.dataset, data);
  td.appendChild(a);
  return td;
}

function setStatus(phase) {
  const el = document.getElementById("status");
  if (el) { el.textContent = phase; el.className = `phase ${phase}`; }
}

async function getJSON(url) {
  const r = await fetch(url, {credentials: "same-origin"});
  if (!r.ok) {
    let msg = `${url}: ${r.status}`;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON: keep the status */ }
    throw new Error(msg);
  }
  return r.json();
}

// -- a local run ---------------------------------------------------------------------------------

function localRun(root) {
  const name = root.dataset.name;
  let logNode = null;
  const base = `/api/runs/${encodeURIComponent(name)}`;

  let chosen = false;  // a node the user clicked; until then the log follows the running (or last) node

  function follow(run) {
    if (chosen) return;
    const withLog = run.nodes.filter((n) => n.has_log);
    const running = withLog.filter((n) => n.phase === "Running");
    const pick = running.length ? running[running.length - 1] : withLog[withLog.length - 1];
    if (pick && pick.id !== logNode) {
      logNode = pick.id;
      document.getElementById("log-node").textContent = `${logNode} (following the run; click a node to pick one)`;
    }
  }

  async function showLog() {
    const pre = document.getElementById("log-text");
    pre.hidden = !logNode;
    if (!logNode) return;
    const r = await fetch(`${base}/nodes/${encodeURIComponent(logNode)}/log?tail=200`, {credentials: "same-origin"});
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = r.ok ? await r.text() : `(no log: ${r.status})`;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function render(run) {
    setStatus(run.status);
    document.getElementById("duration").textContent = fmtDuration(run.duration_s);
    document.getElementById("run-message").textContent = run.message || "";
    document.getElementById("stop-form").hidden = !run.can_stop;
    document.getElementById("resume-form").hidden = !run.can_resume;
    const launch = document.getElementById("launch-log");
    launch.hidden = !run.launch_log;
    launch.textContent = run.launch_log || "";
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren(...run.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.node = n.id;
      tr.append(n.has_log ? linkCell(n.id, "log-link", {node: n.id}) : cell(n.id), cell(n.depends),
                phaseCell(n.phase, n.reused ? " (reused)" : ""), cell(n.progress), cell(fmtDuration(n.duration_s)),
                cell(n.attempts), cell(n.message, "small"));
      return tr;
    }));
  }

  async function tick() {
    try {
      const run = await getJSON(base);
      if (run.status !== root.dataset.status && (run.status === "Running" || root.dataset.status === "Running")) {
        location.reload();  // started or ended: the results and buttons as the server renders them now
        return;
      }
      render(run);
      follow(run);
      await showLog();
      if (run.status === "Running") setTimeout(tick, POLL_MS);
      else setTimeout(tick, POLL_MS * 5);  // a finished run can be resumed from elsewhere: look now and then
    } catch (e) {
      document.getElementById("run-message").textContent = `cannot refresh: ${e.message}`;
      setTimeout(tick, POLL_MS * 2);
    }
  }

  root.addEventListener("click", (ev) => {
    const a = ev.target.closest("a.log-link");
    if (!a) return;
    logNode = a.dataset.node;
    chosen = true;
    document.getElementById("log-node").textContent = logNode;
    showLog();
  });
  tick();
}

// -- an Argo workflow ----------------------------------------------------------------------------

function argoWorkflow(root) {
  const name = root.dataset.name;
  let pod = null;

  async function showLog() {
    if (!pod) return;
    const r = await fetch(`/api/argo/${encodeURIComponent(name)}/log?pod=${encodeURIComponent(pod)}&tail=200`,
                          {credentials: "same-origin"});
    const pre = document.getElementById("log-text");
    pre.hidden = false;
    pre.textContent = r.ok ? await r.text() : `(no log: ${await r.text()})`;
  }

  async function tick() {
    try {
      const wf = await getJSON(`/api/argo/${encodeURIComponent(name)}`);
      if (wf.phase !== root.dataset.phase) {
        location.reload();  // the Stop and Retry buttons as the server renders them for the new phase
        return;
      }
      setStatus(wf.phase);
      document.getElementById("wf-message").textContent = wf.message || "";
      document.querySelector("#nodes tbody").replaceChildren(...wf.nodes.map((n) => {
        const tr = document.createElement("tr");
        tr.append(n.pod ? linkCell(n.name, "argo-log-link", {pod: n.pod}) : cell(n.name), cell(n.template),
                  phaseCell(n.phase), cell(n.progress), cell(fmtDuration(n.duration_s)), cell(n.message, "small"));
        return tr;
      }));
      await showLog();
      setTimeout(tick, wf.phase === "Running" || wf.phase === "Pending" ? POLL_MS : POLL_MS * 5);
    } catch (e) {
      document.getElementById("wf-message").textContent = `cannot refresh: ${e.message}`;
      setTimeout(tick, POLL_MS * 3);
    }
  }

  root.addEventListener("click", (ev) => {
    const a = ev.target.closest("a.argo-log-link");
    if (!a) return;
    pod = a.dataset.pod;
    document.getElementById("log-node").textContent = pod;
    showLog();
  });
  setTimeout(tick, POLL_MS);
}

// -- the runs list: reload when a run appears, goes or changes status (e.g. a `kubellm run` in a terminal)

function runsList(table) {
  const shown = () => JSON.stringify([...table.querySelectorAll("tr[data-run]")].map(
    (tr) => [tr.dataset.run, tr.dataset.status]));
  const before = shown();
  async function tick() {
    try {
      const rows = await getJSON("/api/runs");
      const now = JSON.stringify(rows.map((r) => [r.name, r.status]));
      if (now !== before) { location.reload(); return; }
      const running = rows.some((r) => r.status === "Running");
      setTimeout(tick, running ? POLL_MS : POLL_MS * 5);
    } catch (e) {
      setTimeout(tick, POLL_MS * 5);
    }
  }
  setTimeout(tick, POLL_MS);
}

const runsTable = document.getElementById("runs-list");
if (runsTable) runsList(runsTable);
const runRoot = document.getElementById("run");
if (runRoot) localRun(runRoot);
const argoRoot = document.getElementById("argo-wf");
if (argoRoot) argoWorkflow(argoRoot);
