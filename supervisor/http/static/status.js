// pgvisor's status page (supervisor/http/page.py renders the document this fills).
//
// Polls GET /status every data-refresh-ms and renders it. Every value is written with
// textContent or as an attribute of an element made here, never as HTML: an error text
// or a name is shown as typed, never run. Actions are JSON API requests with the bearer
// token typed once per tab (sessionStorage); without it the page is read-only. Paths are
// relative to the page, so it also works behind a reverse proxy's path prefix.
"use strict";

(function () {
  const TOKEN_KEY = "pgvisor.token";
  const STATES = ["starting", "running", "waiting", "stopped", "disabled",
                  "disabled_by_supervisor", "unknown"];
  const ERROR_SHOWN = 80;      // characters of a last error shown before "more"
  const EVENTS_KEPT = 20;      // recent state changes listed
  const OUTCOMES_KEPT = 8;     // action outcomes listed
  const ACTION_TIMEOUT = 15;   // seconds an action waits for its outcome (?wait=1)
  const PENDING = "new spec not applied: ";  // how last_error words a pending edit
  const NOTIFIER_COLUMNS = ["name", "dsn", "connected", "channels", "subscribers", "backlog",
                            "queue_usage", "reconnects", "last_error"];
  const NODE_COLUMNS = ["name", "this", "leader", "role", "heartbeat_age", "instances",
                        "running"];

  const body = document.body;
  const refreshMs = Number(body.dataset.refreshMs) || 2000;
  const specFields = (body.dataset.specFields || "").split(",").filter(Boolean);
  const $ = (id) => document.getElementById(id);

  let previous = null;        // {name: {state, processed, at}} from the last poll
  const events = [];          // newest first: {at, name, from, to, reason}
  let shown = {};            // {name: view} as rendered last
  let busy = false;           // an action is running: buttons are disabled meanwhile

  // -- small DOM makers (text only) ------------------------------------------------------
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }
  function show(value) {
    if (value === null || value === undefined) return "\u2013";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Array.isArray(value)) return value.map(show).join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }
  function clock(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "\u2013";
  }
  function ago(epoch) {
    if (!epoch) return "";
    let s = Math.max(0, Math.round(Date.now() / 1000 - epoch));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    s %= 60;
    return h ? h + "h " + m + "m" : m ? m + "m " + s + "s" : s + "s";
  }

  // -- the token ---------------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }
  function setToken(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    const has = Boolean(value);
    $("token").hidden = has;
    $("token-use").hidden = has;
    $("token-forget").hidden = !has;
    $("mode").textContent = has ? "token set for this tab: actions enabled"
                                : "read-only: enter the API token to act";
    body.classList.toggle("can-act", has);
    refreshActions();
  }
  // The actions column of every row again (the token came or went), without a poll.
  function refreshActions() {
    for (const row of $("instances").tBodies[0].rows) {
      const view = shown[row.dataset.instance];
      if (view) row.replaceChild(actionsCell(view), row.lastChild);
    }
  }
  function headers(extra) {
    const result = Object.assign({"Accept": "application/json"}, extra || {});
    if (token()) result["Authorization"] = "Bearer " + token();
    return result;
  }

  // -- rendering ----------------------------------------------------------------------------
  function renderDatabase(data) {
    const db = data.database || {};
    const list = $("database");
    clear(list);
    const facts = [
      ["state", db.state, "db-" + (db.state === "up" ? "up" : db.state === "down" ? "down"
                                                                                 : "unknown")],
      ["role", db.role],
      ["timeline", db.timeline],
      ["since", db.since ? clock(db.since) + " (" + ago(db.since) + ")" : null],
      ["paused", db.paused ? "yes (" + show(db.paused_by) + ")" : "no"],
      ["service", data.running ? "running" : "stopping"],
    ];
    if (db.error) facts.push(["error", db.error, "error-text"]);
    for (const [term, value, className] of facts) {
      list.appendChild(el("dt", term));
      list.appendChild(el("dd", show(value), className));
    }
    const counters = data.counters || {};
    $("counters").textContent = Object.keys(counters).sort()
      .map((k) => k + " " + counters[k]).join(" \u00b7 ");
  }

  // A list of objects of a shape this page may not know yet (notifiers, nodes): the known
  // columns present, then every other key in one "more" cell, each value as text.
  function renderObjects(sectionId, tableId, items, known) {
    const section = $(sectionId);
    section.hidden = !Array.isArray(items);
    if (!Array.isArray(items)) return;
    const keys = known.filter((k) => items.some((item) => k in item));
    const more = (item) => Object.keys(item).filter((k) => !keys.includes(k)).sort()
      .map((k) => k.replace(/_/g, " ") + " " + show(item[k])).join(" \u00b7 ");
    const withMore = items.some((item) => more(item));
    const table = $(tableId);
    const head = table.tHead, rows = table.tBodies[0];
    clear(head);
    clear(rows);
    const tr = el("tr");
    keys.forEach((k) => tr.appendChild(el("th", k.replace(/_/g, " "))));
    if (withMore) tr.appendChild(el("th", "more"));
    head.appendChild(tr);
    for (const item of items) {
      const row = el("tr");
      for (const k of keys) {
        const flag = k === "connected" || k === "leader" || k === "alive";
        const className = flag ? (item[k] ? "yes" : "no")
                        : (k === "last_error" && item[k] ? "error-text" : k);
        row.appendChild(el("td", show(item[k]), className));
      }
      if (withMore) row.appendChild(el("td", more(item), "more muted"));
      rows.appendChild(row);
    }
  }

  function rateOf(view, now) {
    const before = previous && previous[view.name];
    if (!before || typeof view.processed !== "number" || view.processed < before.processed) {
      return null;  // first sight, or the counter began again (a restart)
    }
    const seconds = (now - before.at) / 1000;
    return seconds > 0 ? (view.processed - before.processed) / seconds : null;
  }

  // Long text (an error, a parking reason) cut at ERROR_SHOWN, all of it on hover (title)
  // and when expanded (a details element).
  function expandable(text, className) {
    text = String(text);
    if (text.length <= ERROR_SHOWN) return el("div", text, className);
    const details = el("details", null, className);
    const summary = el("summary", text.slice(0, ERROR_SHOWN) + "\u2026");
    summary.title = text;
    details.appendChild(summary);
    details.appendChild(el("pre", text));
    return details;
  }

  function stateCell(view) {
    const state = STATES.includes(view.state) ? view.state : "unknown";
    const td = el("td", null, "state");
    td.appendChild(el("span", view.state, "badge state-" + state));
    if (view.parked_reason) td.appendChild(expandable(view.parked_reason, "reason"));
    // An edit that cannot start: the instance runs its previous spec meanwhile.
    if (view.pending_spec_error) {
      td.appendChild(expandable(PENDING + view.pending_spec_error, "reason pending"));
    }
    if (view.since) td.title = view.state + " since " + clock(view.since);
    return td;
  }

  function errorCell(text) {
    const td = el("td", text ? null : "\u2013", "last-error");
    if (text) td.appendChild(expandable(text, "error-text"));
    return td;
  }

  function actionsCell(view) {
    const td = el("td", null, "actions");
    if (!token()) return td;
    const actions = ["restart", "verify", "shutdown"];
    if (view.registered !== false && view.enabled === false) actions.unshift("enable");
    for (const action of actions) {
      const button = el("button", action, "action");
      button.type = "button";
      button.dataset.action = action;
      button.dataset.instance = view.name;
      button.disabled = busy;
      button.addEventListener("click", () => act(action, view.name));
      td.appendChild(button);
    }
    return td;
  }

  function renderInstances(views, now) {
    const rows = $("instances").tBodies[0];
    // What was expanded stays expanded across the refresh: "name column" keys.
    const open = new Set(Array.from(rows.querySelectorAll("details[open]"))
      .map((d) => d.closest("tr").dataset.instance + " " + d.closest("td").className));
    clear(rows);
    shown = {};
    if (!views.length) {
      const td = el("td", "no instances registered", "muted");
      td.colSpan = 11;
      rows.appendChild(el("tr")).appendChild(td);
    }
    for (const view of views) {
      const row = el("tr");
      row.dataset.instance = view.name;
      shown[view.name] = view;
      const name = el("td", null, "name");
      name.appendChild(el("div", view.name));
      if (view.channels && view.channels.length) {
        name.appendChild(el("div", show(view.channels), "channels muted"));
      }
      if ("node" in view) {  // multi-node: where it is assigned, and the fencing token
        name.appendChild(el("div", view.node === null ? "on no node"
          : "on " + view.node + " \u00b7 epoch " + show(view.epoch), "node muted"));
      }
      row.appendChild(name);
      row.appendChild(stateCell(view));
      row.appendChild(el("td", show(view.restarts), "number restarts"));
      const budget = el("td", show(view.budget_left), "number budget");
      budget.title = "restart_max_rate " + show(view.restart_max_rate || "default");
      row.appendChild(budget);
      row.appendChild(el("td", show(view.backlog), "number queue"));
      row.appendChild(el("td", show(view.spool_errors), "number spool-errors"));
      const overflows = el("td", show(view.overflows), "number overflows");
      if (view.dropped !== undefined) overflows.title = show(view.dropped) + " dropped";
      row.appendChild(overflows);
      row.appendChild(el("td", show(view.catch_ups), "number catch-ups"));
      const rate = rateOf(view, now);
      row.appendChild(el("td", rate === null ? "\u2013" : rate.toFixed(1), "number rate"));
      // A parked instance's last error is its parking reason, and an edit's that cannot
      // start is its pending error: both are shown under its state.
      const underState = [view.parked_reason, PENDING + view.pending_spec_error];
      row.appendChild(errorCell(underState.includes(view.last_error) ? null
                                                                     : view.last_error));
      row.appendChild(actionsCell(view));
      for (const details of row.querySelectorAll("details")) {
        details.open = open.has(view.name + " " + details.closest("td").className);
      }
      rows.appendChild(row);
    }
  }

  function noteChanges(views, now) {
    if (previous === null) {  // first sight: each instance's current state, since when
      for (const view of views) {
        events.push({at: view.since, name: view.name, from: null, to: view.state,
                     reason: view.parked_reason});
      }
      events.sort((a, b) => (b.at || 0) - (a.at || 0));
    } else {
      for (const view of views) {
        const before = previous[view.name];
        if (!before || before.state !== view.state) {
          events.unshift({at: view.since || Date.now() / 1000, name: view.name,
                          from: before ? before.state : null, to: view.state,
                          reason: view.parked_reason});
        }
      }
    }
    events.splice(EVENTS_KEPT);
    const list = $("events");
    clear(list);
    for (const event of events) {
      const item = el("li");
      item.appendChild(el("time", clock(event.at), "muted"));
      item.appendChild(el("span", event.name, "name"));
      if (event.from) item.appendChild(el("span", event.from + " \u2192", "muted"));
      const state = STATES.includes(event.to) ? event.to : "unknown";
      item.appendChild(el("span", event.to, "badge state-" + state));
      if (event.reason) item.appendChild(el("span", event.reason, "reason"));
      list.appendChild(item);
    }
    previous = {};
    for (const view of views) {
      previous[view.name] = {state: view.state, processed: view.processed, at: now};
    }
  }

  function render(data) {
    const now = Date.now();
    const views = Array.isArray(data.instances) ? data.instances : [];
    renderDatabase(data);
    // The shared LISTEN connections: top-level notifiers (database.notifiers as well).
    const notifiers = data.notifiers || (data.database || {}).notifiers;
    renderObjects("notifiers-section", "notifiers", notifiers, NOTIFIER_COLUMNS);
    renderObjects("nodes-section", "nodes", data.nodes, NODE_COLUMNS);
    renderInstances(views, now);
    noteChanges(views, now);
    $("refreshed").textContent = "updated " + new Date(now).toLocaleTimeString();
    body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
  }

  function problem(text) {
    const node = $("problem");
    node.hidden = !text;
    node.textContent = text || "";
    body.classList.toggle("stale", Boolean(text));
  }

  async function errorOf(answer) {
    try {
      const data = await answer.json();
      return answer.status + " " + (data.error || answer.statusText);
    } catch (e) {
      return answer.status + " " + answer.statusText;
    }
  }

  async function poll() {
    try {
      const answer = await fetch("status", {headers: headers(), cache: "no-store"});
      if (answer.status === 401) {
        problem("this service needs the API token for reads too: enter it above");
      } else if (!answer.ok) {
        problem("GET /status answered " + (await errorOf(answer)));
      } else {
        render(await answer.json());
        problem(null);
      }
    } catch (e) {
      problem("service unreachable (" + e.message + "); showing the last data");
    }
    setTimeout(poll, refreshMs);
  }

  // -- actions ------------------------------------------------------------------------------
  function outcome(text, ok) {
    const list = $("outcomes");
    const item = el("li", new Date().toLocaleTimeString() + " " + text,
                    ok ? "outcome ok" : "outcome failed");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > OUTCOMES_KEPT) list.removeChild(list.lastChild);
  }

  function setBusy(value) {
    busy = value;
    for (const button of document.querySelectorAll("button.action")) button.disabled = value;
  }

  async function request(method, path, data) {
    const answer = await fetch(path, {
      method: method, cache: "no-store",
      headers: headers({"Content-Type": "application/json"}),
      body: data === undefined ? undefined : JSON.stringify(data)});
    if (answer.status === 401) {
      setToken(null);
      throw new Error("the token was refused (401): enter it again");
    }
    if (!answer.ok) throw new Error(await errorOf(answer));
    return answer.json();
  }

  async function enable(name) {
    const view = await request("GET", "instances/" + encodeURIComponent(name));
    const spec = {};
    for (const field of specFields) if (field in view) spec[field] = view[field];
    spec.enabled = true;
    const done = await request("PUT", "instances/" + encodeURIComponent(name), spec);
    return "enabled (registry version " + show(done.registry_version) + ")";
  }

  async function act(action, name) {
    if (busy || !token()) return;
    setBusy(true);
    try {
      let text;
      if (action === "enable") {
        text = await enable(name);
      } else {
        const path = "instances/" + encodeURIComponent(name) + "/" + action +
                     "?wait=1&timeout=" + ACTION_TIMEOUT;
        const op = await request("POST", path, {});
        text = op.status === "done" ? show((op.result || {})[name])
             : op.status === "pending" ? "still pending after " + ACTION_TIMEOUT + " s"
             : "failed: " + show(op.error);
      }
      outcome(action + " " + name + ": " + text, true);
    } catch (e) {
      outcome(action + " " + name + ": " + e.message, false);
    } finally {
      setBusy(false);
    }
  }

  // -- start --------------------------------------------------------------------------------
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    $("token").value = "";
    setToken(value || null);
  });
  $("token-forget").addEventListener("click", () => setToken(null));
  setToken(token());
  poll();
})();
