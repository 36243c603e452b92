// The agentflow console: plain DOM code over the JSON API, refreshed by polling.
// The API token is kept in this browser's localStorage; "#token=..." in the URL sets it.
"use strict";

const POLL_MS = 1000;
const COLORS = {
  completed: "#1a7f37", succeeded: "#1a7f37", approved: "#1a7f37",
  failed: "#cf222e", cancelled: "#cf222e", rejected: "#cf222e", expired: "#cf222e",
  waiting: "#9a6700", running: "#0969da", skipped: "#6e7781", pending: "#6e7781",
};

function token() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    localStorage.setItem("agentflow-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem("agentflow-token");
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: {"Authorization": "Bearer " + token(), "Content-Type": "application/json"},
  });
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(body.message || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child ?? ""));
  }
  return node;
}

function badge(status) {
  const span = el("span", {class: "badge"}, status);
  span.style.background = COLORS[status] || "#6e7781";
  return span;
}

function clock(seconds) {
  if (seconds == null) return "-";
  return new Date(seconds * 1000).toLocaleString();
}

function took(step) {
  if (step.started_at == null || step.finished_at == null) return "-";
  return (step.finished_at - step.started_at).toFixed(2) + "s";
}

function json(value, indent) {
  return typeof value === "string" ? value : JSON.stringify(value, null, indent);
}

function failure(message, traceback) {
  // An error's message, and its traceback (innermost frames) folded away beneath it.
  if (!traceback) return message;
  return el("span", {}, message,
            el("details", {class: "traceback"}, el("summary", {}, "traceback"),
               el("pre", {}, traceback)));
}

function showProblem(error) {
  document.getElementById("problem").textContent = error ? error.message : "";
  if (error && error.status === 401) showLogin();
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("content").hidden = true;
}

function loop(refresh) {
  let timer = null;
  const tick = async () => {
    try {
      await refresh();
      showProblem(null);
    } catch (error) {
      showProblem(error);
    }
    timer = setTimeout(tick, POLL_MS);
  };
  return {
    now() { clearTimeout(timer); tick(); },
  };
}

// -- the runs table -------------------------------------------------------------------

function runsPage() {
  let pages = 1;
  const filters = () => {
    const query = new URLSearchParams();
    const status = document.getElementById("status").value;
    const plan = document.getElementById("plan").value.trim();
    if (status) query.set("status", status);
    if (plan) query.set("plan", plan);
    return query;
  };
  const refresh = async () => {
    const rows = [];
    let cursor = null;
    let next = null;
    for (let page = 0; page < pages; page++) {
      const query = filters();
      if (cursor) query.set("cursor", cursor);
      const body = await api("/api/runs?" + query);
      rows.push(...body.runs);
      next = body.next_cursor;
      if (!next) break;
      cursor = next;
    }
    const tbody = document.querySelector("#runs tbody");
    tbody.replaceChildren(...rows.map((run) => el("tr", {"data-run": run.run_id},
      el("td", {}, el("a", {href: "/runs/" + encodeURIComponent(run.run_id)}, run.run_id)),
      el("td", {}, run.plan_name || run.plan_hash.slice(0, 12)),
      el("td", {}, badge(run.status)),
      el("td", {}, clock(run.created_at)),
      el("td", {}, clock(run.updated_at)))));
    document.getElementById("more").hidden = !next;
  };
  const poller = loop(refresh);
  document.getElementById("filters").addEventListener("input", () => { pages = 1; poller.now(); });
  document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("more").addEventListener("click", () => { pages += 1; poller.now(); });
  poller.now();
}

// -- one run --------------------------------------------------------------------------

function drawGraph(graph, steps) {
  const status = Object.fromEntries(steps.map((step) => [step.id, step.status]));
  const W = 170, H = 46, GX = 30, GY = 40;
  const width = Math.max(...graph.nodes.map((n) => n.slot + 1)) * (W + GX) + GX + 90;
  const height = Math.max(...graph.nodes.map((n) => n.layer + 1)) * (H + GY) + GY;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("id", "plan-graph");
  const place = {};
  for (const node of graph.nodes) {
    place[node.id] = {x: GX + node.slot * (W + GX), y: GY / 2 + node.layer * (H + GY)};
  }
  const layer = Object.fromEntries(graph.nodes.map((node) => [node.id, node.layer]));
  for (const [from, to] of graph.edges) {
    // Adjacent layers: a straight line. Longer edges bend out to the right, wider the
    // further they reach, so they do not run through the steps between.
    const a = place[from], b = place[to];
    const span = layer[to] - layer[from];
    const path = document.createElementNS(NS, "path");
    if (span <= 1) {
      path.setAttribute("d", `M ${a.x + W / 2} ${a.y + H} L ${b.x + W / 2} ${b.y}`);
    } else {
      const bend = 25 + 12 * span;
      path.setAttribute("d", `M ${a.x + W} ${a.y + H / 2} C ${a.x + W + bend} ${a.y + H / 2},`
                        + ` ${b.x + W + bend} ${b.y + H / 2}, ${b.x + W} ${b.y + H / 2}`);
    }
    path.setAttribute("class", "edge");
    svg.append(path);
  }
  for (const node of graph.nodes) {
    const group = document.createElementNS(NS, "g");
    group.setAttribute("class", "node");
    group.setAttribute("data-step", node.id);
    group.setAttribute("data-status", status[node.id] || "pending");
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("x", place[node.id].x);
    rect.setAttribute("y", place[node.id].y);
    rect.setAttribute("width", W);
    rect.setAttribute("height", H);
    rect.setAttribute("rx", node.shape === "tool" ? 4 : 16);
    rect.setAttribute("fill", COLORS[status[node.id]] || COLORS.pending);
    group.append(rect);
    node.lines.slice(0, 2).forEach((text, index) => {
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", place[node.id].x + W / 2);
      label.setAttribute("y", place[node.id].y + 18 + index * 16);
      label.setAttribute("class", index ? "sub" : "title");
      label.textContent = text.length > 26 ? text.slice(0, 25) + "…" : text;
      group.append(label);
    });
    svg.append(group);
  }
  return svg;
}

function approvalCard(runId, wait, afterDecision) {
  const args = el("textarea", {class: "args", rows: 6, cols: 60, spellcheck: "false"},
                  json(wait.args ?? {}, 2));
  const comment = el("input", {class: "comment", placeholder: "comment or reason", size: 40});
  const decide = async (action, body) => {
    try {
      await api(`/api/runs/${encodeURIComponent(runId)}/approvals/${encodeURIComponent(wait.id)}/${action}`,
                {method: "POST", body: JSON.stringify(body)});
      card.querySelector(".outcome").textContent = action === "approve" ? "approved" : "rejected";
      afterDecision();
    } catch (error) {
      card.querySelector(".outcome").textContent = error.message;
    }
  };
  const editedArgs = () => JSON.parse(args.value);
  const card = el("div", {class: "approval", "data-pending": wait.id},
    el("p", {}, el("b", {}, wait.prompt || "Approve?")),
    el("p", {class: "muted"}, `step ${wait.step_id || "-"} · tool ${wait.tool || "-"} · id ${wait.id}`
       + (wait.expires_at ? ` · expires ${clock(wait.expires_at)}` : "")),
    el("pre", {class: "exact-args"}, json(wait.args ?? {}, 2)),
    el("details", {}, el("summary", {}, "Edit arguments"), args),
    el("p", {}, comment,
       el("button", {class: "approve", onclick: () => decide("approve", {comment: comment.value || null})}, "Approve"),
       el("button", {class: "edit-approve", onclick: () => {
         let edited;
         try { edited = editedArgs(); } catch (error) {
           card.querySelector(".outcome").textContent = "arguments are not JSON: " + error.message;
           return;
         }
         decide("approve", {comment: comment.value || null, args: edited});
       }}, "Edit and approve"),
       el("button", {class: "reject", onclick: () => decide("reject", {reason: comment.value || null})}, "Reject")),
    el("p", {class: "outcome"}));
  return card;
}

function runPage() {
  const runId = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("run-id").textContent = runId;
  let shownPending = "";
  let shownGraph = "";
  let poller = null;
  const refresh = async () => {
    const base = "/api/runs/" + encodeURIComponent(runId);
    const [run, journal] = await Promise.all([api(base), api(base + "/journal")]);
    document.title = `agentflow · ${run.run_id} · ${run.status}`;
    document.getElementById("run-status").replaceWith(
      Object.assign(badge(run.status), {id: "run-status"}));
    document.getElementById("run-plan").textContent =
      `plan ${run.plan_name || ""} ${run.plan_hash.slice(0, 12)} · started ${clock(run.created_at)}`;
    document.getElementById("outputs").textContent = run.outputs == null ? "-" : json(run.outputs, 2);
    document.getElementById("run-error").replaceChildren(run.error ? failure(
      `${run.error.step_id ? "step " + run.error.step_id + ": " : ""}${run.error.type}: ${run.error.message}`,
      run.error.traceback) : "");
    const pendingKey = JSON.stringify(run.pending.map((wait) => wait.id));
    if (pendingKey !== shownPending) {  // re-draw only when it changed: keep edits in progress
      shownPending = pendingKey;
      const approvals = run.pending.filter((wait) => wait.kind === "approval");
      document.getElementById("approvals-section").hidden = approvals.length === 0;
      document.getElementById("approvals").replaceChildren(
        ...approvals.map((wait) => approvalCard(runId, wait, () => poller.now())));
    }
    const graphKey = JSON.stringify(run.steps.map((step) => step.status));
    if (run.graph && graphKey !== shownGraph) {
      shownGraph = graphKey;
      document.getElementById("graph").replaceChildren(drawGraph(run.graph, run.steps));
    } else if (!run.graph && run.source) {
      document.getElementById("source").hidden = false;
      document.getElementById("source").textContent = run.source;
    }
    document.querySelector("#steps tbody").replaceChildren(...run.steps.map((step) => el("tr",
      {"data-step": step.id},
      el("td", {}, el("code", {}, step.id)),
      el("td", {}, badge(step.status)),
      el("td", {}, step.attempts + (step.items != null ? ` (${step.items} items)` : "")),
      el("td", {}, clock(step.started_at)),
      el("td", {}, took(step)),
      el("td", {class: step.error ? "problem" : ""},
         step.error ? failure(`${step.error_type || "Error"}: ${step.error}`, step.traceback)
                    : step.output == null ? "" : el("code", {}, json(step.output))))));
    document.getElementById("journal").replaceChildren(...journal.map((entry) => el("li",
      {class: "entry entry-" + entry.kind},
      el("span", {class: "at"}, new Date(entry.at * 1000).toLocaleTimeString()),
      el("b", {}, entry.kind), " ", el("code", {}, entry.key),
      entry.attempt ? ` attempt ${entry.attempt}` : "",
      entry.tool ? ` · ${entry.tool}` : "",
      entry.data == null ? "" : el("code", {class: "data"}, " " + json(entry.data).slice(0, 300)))));
  };
  poller = loop(refresh);
  poller.now();
}

function start() {
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem("agentflow-token", document.getElementById("token").value.trim());
    location.reload();
  });
  if (!token()) {
    showLogin();
    return;
  }
  document.getElementById("content").hidden = false;
  if (document.body.dataset.page === "runs") runsPage();
  else runPage();
}

document.addEventListener("DOMContentLoaded", start);
