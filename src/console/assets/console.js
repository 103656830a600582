// The Quiver web console: one page, no build step, no dependencies. Every figure comes from
// the JSON API under /api (docs/CONSOLE.md); text from the broker is always set as text,
// never as HTML.
"use strict";

const view = document.getElementById("view");
let timer = null; // the overview's refresh
let token = sessionStorage.getItem("quiver-token") || "";

// ---- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function notice(text, kind) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = kind || "info";
  n.hidden = !text;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["Authorization"] = "Bearer " + token;
  const resp = await fetch("/api" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  const needsLogin = resp.status === 401 ||
    (resp.status === 403 && data && (/admin.token/.test(data.error || "") || /log in/.test(data.error || "")));
  if (needsLogin && path !== "/login") {
    document.getElementById("token-box").hidden = false;
  }
  if (!resp.ok) {
    const err = new Error((data && data.error) || resp.status + " " + resp.statusText);
    err.status = data && data.status;
    throw err;
  }
  return data;
}

// Runs an action, showing its error (or a success message) in the notice bar.
async function act(fn, ok) {
  try {
    const r = await fn();
    if (ok) notice(typeof ok === "function" ? ok(r) : ok, "info");
    return r;
  } catch (e) {
    notice(e.message, "error");
    return undefined;
  }
}

const num = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC") : "-");
const enc = encodeURIComponent;

function table(headers, rows, opts) {
  opts = opts || {};
  return h("table", { id: opts.id },
    h("thead", {}, h("tr", {}, headers.map((c) => h("th", { class: c.num ? "num" : null }, c.label || c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, opts.empty || "nothing here"))));
}

function row(cells, onclick, attrs) {
  return h("tr", Object.assign({ class: onclick ? "clickable" : null, onclick }, attrs || {}),
    cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c))));
}

const numCell = (n) => h("td", { class: "num" }, num(n));

function field(label, input) {
  return h("label", {}, label, input);
}

function pairs(text) {
  const out = {};
  for (const line of (text || "").split(/\n|,/)) {
    const t = line.trim();
    if (!t) continue;
    const i = t.indexOf("=");
    if (i <= 0) throw new Error("write properties as name=value, got " + JSON.stringify(t));
    out[t.slice(0, i).trim()] = t.slice(i + 1).trim();
  }
  return out;
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ""));
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

// ---- overview ------------------------------------------------------------------------

const history = []; // {t, in, out} samples for the chart

function drawChart(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = (history[i].t - history[i - 1].t) / 1000;
    if (dt <= 0) continue;
    rates.push({ in: (history[i].in - history[i - 1].in) / dt, out: (history[i].out - history[i - 1].out) / dt });
  }
  const max = Math.max(1, ...rates.map((r) => Math.max(r.in, r.out)));
  g.fillStyle = "#6b7385"; g.font = "11px system-ui";
  g.fillText(num(Math.round(max)) + " msg/s", 6, 12);
  const line = (key, color) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    rates.forEach((r, i) => {
      const x = rates.length < 2 ? w : (i / (rates.length - 1)) * (w - 10) + 5;
      const y = hgt - 6 - (r[key] / max) * (hgt - 24);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  };
  line("in", "#2463d1");
  line("out", "#e07b1a");
  return rates[rates.length - 1];
}

async function overview() {
  const cards = h("div", { class: "cards", id: "overview-cards" });
  const canvas = h("canvas", { id: "rates-chart" });
  const legend = h("div", { class: "legend" }, h("span", { class: "in", id: "rate-in" }, "in: -"), h("span", { class: "out", id: "rate-out" }, "out: -"));
  const extra = h("div", {});
  view.replaceChildren(h("h2", {}, "Overview"), cards, h("h3", {}, "Message rates (last 2 minutes)"), legend, canvas, extra);
  const card = (label, value, id) => h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
  const refresh = async () => {
    let o;
    try { o = await api("GET", "/overview"); } catch (e) { notice(e.message, "error"); return; }
    document.getElementById("broker-name").textContent = o.broker + " · " + o.role;
    cards.replaceChildren(
      card("Broker", o.broker, "ov-broker"),
      card("Role", o.role, "ov-role"),
      card("Version", o.version + " (" + o.commit + ")", "ov-version"),
      card("Uptime", Math.floor(o.uptime_seconds / 3600) + "h " + Math.floor((o.uptime_seconds % 3600) / 60) + "m " + (o.uptime_seconds % 60) + "s", "ov-uptime"),
      card("Connections", num(o.connections), "ov-connections"),
      card("Topics", num(o.topics), "ov-topics"),
      card("Consumer groups", num(o.groups), "ov-groups"),
      card("Messages in", num(o.totals.messages_in), "ov-in"),
      card("Messages out", num(o.totals.messages_out), "ov-out"),
      card("Scheduled pending", num(o.scheduled_pending), "ov-scheduled"),
      card("Unresolved transactions", num(o.unresolved_transactions), "ov-transactions"),
      card("Dead letters", num(o.dlq_messages), "ov-dlq"),
      card("Plugins", num(o.plugins), "ov-plugins"),
      card("Long polls parked", num(o.long_polls_parked), "ov-parked"),
      card("Commit log", num(o.log_bytes) + " B", "ov-log"),
      card("Disk used", o.disk_used_ratio === null ? "-" : Math.round(o.disk_used_ratio * 100) + "%" + (o.disk_full ? " (writes refused)" : ""), "ov-disk"),
      card("Flush", o.flush, "ov-flush"),
    );
    history.push({ t: o.now_ms, in: o.totals.messages_in, out: o.totals.messages_out });
    while (history.length > 61) history.shift();
    const last = drawChart(canvas);
    if (last) {
      document.getElementById("rate-in").textContent = "in: " + num(Math.round(last.in)) + " msg/s";
      document.getElementById("rate-out").textContent = "out: " + num(Math.round(last.out)) + " msg/s";
    }
    const parts = [];
    if (o.slaves.length) {
      parts.push(h("h3", {}, "Slaves"), table(["Node", { label: "Lag bytes", num: 1 }, { label: "Lag messages", num: 1 }, "In sync"],
        o.slaves.map((s) => row([s.node, numCell(s.lag_bytes), numCell(s.lag_messages), s.in_sync ? "yes" : "no"]))));
    }
    if (o.role !== "standalone") {
      try {
        const c = await api("GET", "/cluster");
        if (c) {
          parts.push(h("h3", {}, "Cluster " + c.cluster + " (controller term " + c.term + ", leader " + c.leader + ")"),
            table(["Node", "Set", "Address", "Master", "In sync", "Alive"],
              c.brokers.map((b) => row([b.node, b.set, b.addr, b.master ? "master" : "slave", b.in_sync ? "yes" : "no", b.alive ? "yes" : "no"]))));
        }
      } catch (e) { parts.push(h("p", { class: "muted" }, "cluster: " + e.message)); }
    }
    extra.replaceChildren(...parts);
  };
  await refresh();
  timer = setInterval(refresh, 2000);
}

// ---- topics --------------------------------------------------------------------------

async function topics() {
  const list = await api("GET", "/topics");
  const name = h("input", { id: "topic-create-name", required: true, placeholder: "orders" });
  const queues = h("input", { id: "topic-create-queues", type: "number", min: 1, placeholder: "default" });
  const form = h("form", { class: "inline", id: "topic-create", onsubmit: async (e) => {
    e.preventDefault();
    const body = { topic: name.value.trim() };
    if (queues.value) body.queues = Number(queues.value);
    if (await act(() => api("POST", "/topics", body), (r) => "topic " + r.topic + " created with " + r.queues + " queues")) render();
  } }, field("Topic", name), field("Queues", queues), h("button", { type: "submit", id: "topic-create-submit" }, "Create topic"));
  const showSystem = h("input", { type: "checkbox", id: "topic-show-system" });
  const body = h("div", {});
  const draw = () => body.replaceChildren(table(["Topic", { label: "Queues", num: 1 }, { label: "Messages", num: 1 }],
    list.filter((t) => showSystem.checked || !t.system).map((t) => row([t.topic, numCell(t.queues), numCell(t.messages)], () => { location.hash = "#topic/" + enc(t.topic); }, { "data-topic": t.topic })),
    { id: "topics-table", empty: "no topics yet" }));
  showSystem.addEventListener("change", draw);
  draw();
  view.replaceChildren(h("h2", {}, "Topics"), form, h("label", {}, showSystem, " show system topics (retry, dead-letter, scheduled)"), body);
}

async function topic(name, lastSent) {
  const t = await api("GET", "/topics/" + enc(name));
  const queueRows = t.queues.map((q) => row([q.queue, numCell(q.min_offset), numCell(q.max_offset), numCell(q.messages)], null, { "data-queue": q.queue }));
  // send a test message
  const mBody = h("textarea", { id: "send-body", placeholder: "message body" });
  const mTag = h("input", { id: "send-tag", placeholder: "tag" });
  const mKeys = h("input", { id: "send-keys", placeholder: "key1,key2" });
  const mProps = h("textarea", { id: "send-props", placeholder: "name=value, one per line" });
  const sendForm = h("form", { class: "inline", id: "send-form", onsubmit: async (e) => {
    e.preventDefault();
    let props;
    try { props = pairs(mProps.value); } catch (err) { notice(err.message, "error"); return; }
    const body = { body: mBody.value, tag: mTag.value.trim(), keys: mKeys.value.split(",").map((k) => k.trim()).filter(Boolean), properties: props };
    const r = await act(() => api("POST", "/topics/" + enc(name) + "/messages", body), (r) => "sent message " + r.id + " to queue " + r.queue + " at offset " + r.offset);
    if (r) topic(name, r.id);
  } }, field("Body", mBody), field("Tag", mTag), field("Keys", mKeys), field("Properties", mProps), h("button", { type: "submit", id: "send-submit" }, "Send test message"));
  // change the queue count
  const nQueues = h("input", { id: "update-queues", type: "number", min: 1, value: t.queues.length });
  const force = h("input", { type: "checkbox", id: "update-force" });
  const updateForm = h("form", { class: "inline", id: "update-form", onsubmit: async (e) => {
    e.preventDefault();
    if (await act(() => api("PUT", "/topics/" + enc(name), { queues: Number(nQueues.value), force: force.checked }), (r) => name + " now has " + r.queues + " queues")) topic(name);
  } }, field("Queues", nQueues), h("label", {}, h("span", {}, force, " allow shrinking")), h("button", { type: "submit", id: "update-submit" }, "Change queue count"));
  // delete, confirmed by typing the name
  const confirmName = h("input", { id: "delete-confirm", placeholder: "type " + name + " to confirm" });
  const del = h("button", { type: "submit", class: "danger", id: "delete-submit", disabled: true }, "Delete topic");
  confirmName.addEventListener("input", () => { del.disabled = confirmName.value !== name; });
  const delForm = h("form", { class: "inline", id: "delete-form", onsubmit: async (e) => {
    e.preventDefault();
    if (confirmName.value !== name) return;
    if (await act(() => api("DELETE", "/topics/" + enc(name)), "topic " + name + " deleted")) location.hash = "#topics";
  } }, field("Delete " + name + " and its messages", confirmName), del);
  view.replaceChildren(
    h("h2", {}, "Topic ", h("code", { id: "topic-name" }, t.topic)),
    table(["Queue", { label: "Min offset", num: 1 }, { label: "Max offset", num: 1 }, { label: "Messages", num: 1 }], queueRows, { id: "queues-table" }),
    h("h3", {}, "Send a test message"), sendForm, h("p", { class: "muted" }, "Last sent id: ", h("code", { id: "send-result" }, lastSent || "-")),
    h("h3", {}, "Queues"), updateForm,
    h("div", { class: "danger-zone" }, h("h3", {}, "Delete"), delForm));
}

// ---- consumer groups -----------------------------------------------------------------

async function groups() {
  const list = await api("GET", "/groups");
  view.replaceChildren(h("h2", {}, "Consumer groups"),
    table(["Group", "Mode", { label: "Members", num: 1 }, { label: "Lag", num: 1 }],
      list.map((g) => row([g.group, g.mode, numCell(g.members), numCell(g.lag)], () => { location.hash = "#group/" + enc(g.group); }, { "data-group": g.group })),
      { id: "groups-table", empty: "no consumer groups yet" }));
}

async function group(name) {
  const g = await api("GET", "/groups/" + enc(name));
  const members = table(["Member", "Client", "Address", "Topics", "Queues"],
    g.members.map((m) => row([m.member_id, m.client_id, m.remote, m.topics.join(", "), m.owned.map((o) => o.topic + "/" + o.queue).join(", ") || "-"])),
    { id: "members-table", empty: "no live members" });
  const queues = table(["Topic", { label: "Queue", num: 1 }, { label: "Committed", num: 1 }, { label: "Max offset", num: 1 }, { label: "Lag", num: 1 }, "Owner"],
    g.queues.map((q) => row([q.topic, numCell(q.queue), numCell(q.committed), numCell(q.max_offset), numCell(q.lag), q.owner || "-"], null, { "data-topic": q.topic, "data-queue": q.queue })),
    { id: "group-queues", empty: "no committed offsets" });
  const topicsOf = [...new Set(g.queues.map((q) => q.topic))];
  const topicSel = h("select", { id: "reset-topic" }, topicsOf.map((t) => h("option", { value: t }, t)));
  const to = h("select", { id: "reset-to" }, ["first", "last", "timestamp", "offset"].map((t) => h("option", { value: t }, t)));
  const value = h("input", { id: "reset-value", placeholder: "offset, or time (2026-12-05 10:00 / ms)" });
  const force = h("input", { type: "checkbox", id: "reset-force" });
  const resetForm = h("form", { class: "inline", id: "reset-form", onsubmit: async (e) => {
    e.preventDefault();
    const body = { topic: topicSel.value, to: to.value, force: force.checked };
    if (to.value === "offset") body.value = Number(value.value);
    if (to.value === "timestamp") body.value = /^\d+$/.test(value.value.trim()) ? Number(value.value) : Date.parse(value.value);
    if ((to.value === "offset" || to.value === "timestamp") && !Number.isFinite(body.value)) { notice("give a number or a time", "error"); return; }
    if (await act(() => api("POST", "/groups/" + enc(name) + "/reset", body), (r) => "offsets of " + r.group + " on " + r.topic + " reset to " + r.reset)) group(name);
  } }, field("Topic", topicSel), field("To", to), field("Value", value), h("label", {}, h("span", {}, force, " even with live members")), h("button", { type: "submit", id: "reset-submit", disabled: !topicsOf.length }, "Reset offsets"));
  view.replaceChildren(h("h2", {}, "Group ", h("code", { id: "group-name" }, g.group), " ", h("span", { class: "badge" }, g.mode)),
    h("h3", {}, "Members"), members, h("h3", {}, "Queues"), queues, h("h3", {}, "Reset offsets"), resetForm);
}

// ---- messages ------------------------------------------------------------------------

function hex(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const chunk = bytes.slice(i, i + 16);
    const hx = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const asc = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(i.toString(16).padStart(8, "0") + "  " + hx.padEnd(48) + "  " + asc);
  }
  return lines.join("\n");
}

function messageDetail(m, box) {
  const bytes = Uint8Array.from(atob(m.body_base64), (c) => c.charCodeAt(0));
  const pre = h("pre", { class: "body", id: "body-preview" });
  const modes = {
    text: () => (m.body_text === null ? "(not UTF-8 text: see hex)" : m.body_text),
    json: () => { try { return JSON.stringify(JSON.parse(m.body_text), null, 2); } catch (_) { return "(not JSON)"; } },
    hex: () => hex(bytes),
  };
  const tabs = h("div", { class: "tabs" });
  const show = (k) => { pre.textContent = modes[k](); for (const b of tabs.children) b.classList.toggle("on", b.dataset.mode === k); };
  for (const k of Object.keys(modes)) tabs.append(h("button", { type: "button", class: "secondary", "data-mode": k, id: "body-" + k, onclick: () => show(k) }, k));
  const group = h("input", { id: "resend-group", placeholder: "consumer group" });
  const resend = h("form", { class: "inline", id: "resend-form", onsubmit: async (e) => {
    e.preventDefault();
    await act(() => api("POST", "/messages/" + m.id + "/resend", { group: group.value.trim() }), (r) => "message resent to group " + r.group + " (through " + r.retry_topic + ")");
  } }, field("Resend to group", group), h("button", { type: "submit", id: "resend-submit" }, "Resend"));
  const props = Object.entries(m.properties);
  box.replaceChildren(
    h("h3", {}, "Message ", h("code", { id: "detail-id" }, m.id)),
    table(["Field", "Value"], [
      row(["Topic", m.topic]), row(["Queue / offset", m.queue + " / " + m.offset]), row(["Commit-log offset", num(m.commit_log_offset)]),
      row(["Tag", h("span", { id: "detail-tag" }, m.tag || "-")]), row(["Keys", h("span", { id: "detail-keys" }, m.keys.join(", ") || "-")]),
      row(["Born", time(m.born_timestamp) + " from " + m.born_host]), row(["Stored", time(m.store_timestamp)]),
      row(["Reconsumed", m.reconsume_times]), row(["Body", num(m.body_len) + " bytes"]),
    ], { id: "detail-table" }),
    h("h3", {}, "Properties"),
    table(["Name", "Value"], props.map(([k, v]) => row([k, v])), { id: "detail-props", empty: "no properties" }),
    h("h3", {}, "Body"), tabs, pre, resend);
  show(m.body_text !== null && /^\s*[[{]/.test(m.body_text) ? "json" : m.body_text !== null ? "text" : "hex");
}

function messageTable(list, box, id) {
  return table(["Id", "Topic", "Queue/offset", "Tag", "Keys", "Stored"],
    list.map((m) => row([h("code", {}, m.id), m.topic, m.queue + "/" + m.offset, m.tag || "-", m.keys.join(", ") || "-", time(m.store_timestamp)], () => messageDetail(m, box), { "data-id": m.id })),
    { id, empty: "no message matched" });
}

async function messages() {
  const topicIn = h("input", { id: "search-topic", placeholder: "topic" });
  const keyIn = h("input", { id: "search-key", placeholder: "key" });
  const idIn = h("input", { id: "search-id", placeholder: "32 hex digits", size: 34 });
  const begin = h("input", { id: "search-begin", type: "datetime-local", step: 1 });
  const end = h("input", { id: "search-end", type: "datetime-local", step: 1 });
  const max = h("input", { id: "search-max", type: "number", min: 1, max: 1000, value: 64 });
  const results = h("div", { id: "search-results" });
  const detail = h("div", { id: "message-detail" });
  const form = h("form", { class: "inline", id: "search-form", onsubmit: async (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (idIn.value.trim()) q.set("id", idIn.value.trim());
    else {
      q.set("topic", topicIn.value.trim());
      if (keyIn.value.trim()) q.set("key", keyIn.value.trim());
      if (begin.value) q.set("begin", String(new Date(begin.value).getTime()));
      if (end.value) q.set("end", String(new Date(end.value).getTime()));
      if (!keyIn.value.trim() && !begin.value && !end.value) q.set("begin", "0");
    }
    q.set("max", max.value || "64");
    const list = await act(() => api("GET", "/messages?" + q.toString()));
    if (!list) return;
    notice(list.length + " message(s) found", "info");
    detail.replaceChildren();
    results.replaceChildren(messageTable(list, detail, "results-table"));
    if (list.length === 1) messageDetail(list[0], detail);
  } }, field("Topic", topicIn), field("Key", keyIn), field("or message id", idIn), field("Stored from", begin), field("to", end), field("At most", max), h("button", { type: "submit", id: "search-submit" }, "Search"));
  view.replaceChildren(h("h2", {}, "Messages"), h("p", { class: "muted" }, "By id; or by topic with a key and/or a time range (a topic alone lists its first messages)."), form, results, detail);
}

// ---- dead letters --------------------------------------------------------------------

async function dlqs() {
  const list = await api("GET", "/dlq");
  view.replaceChildren(h("h2", {}, "Dead-letter queues"),
    table(["Group", { label: "Messages", num: 1 }], list.map((d) => row([d.group, numCell(d.messages)], () => { location.hash = "#dlq/" + enc(d.group); }, { "data-group": d.group })),
      { id: "dlq-table", empty: "no dead letters" }));
}

async function dlq(groupName) {
  const list = await api("GET", "/dlq/" + enc(groupName) + "?max=200");
  const detail = h("div", {});
  const all = h("button", { type: "button", id: "dlq-resend-all", disabled: !list.length, onclick: async () => {
    if (await act(() => api("POST", "/dlq/" + enc(groupName) + "/resend", { from: 0 }), (r) => r.resent + " message(s) resent to %RETRY%" + r.group)) dlq(groupName);
  } }, "Resend all to the group");
  const rows = list.map((m) => row([h("code", {}, m.id), m.properties.RETRY_TOPIC || m.topic, m.reconsume_times, time(m.store_timestamp),
    h("td", {}, h("button", { type: "button", class: "secondary", onclick: async (e) => {
      e.stopPropagation();
      await act(() => api("POST", "/dlq/" + enc(groupName) + "/resend", { id: m.id }), "message " + m.id + " resent");
    } }, "Resend"))], () => messageDetail(m, detail), { "data-id": m.id }));
  view.replaceChildren(h("h2", {}, "Dead letters of ", h("code", {}, groupName)), all,
    table(["Id", "From topic", "Reconsumed", "Stored", ""], rows, { id: "dlq-messages", empty: "no dead letters" }), detail);
}

// ---- plugins -------------------------------------------------------------------------

async function plugins() {
  const list = await api("GET", "/plugins");
  const rows = list.map((p) => {
    const topicIn = h("input", { placeholder: "topic", size: 10 });
    const file = h("input", { type: "file", accept: ".wasm,.wat" });
    const force = h("input", { type: "checkbox" });
    const reload = async () => {
      const body = {};
      if (file.files[0]) {
        if (/\.wat$/.test(file.files[0].name)) body.wat = await file.files[0].text();
        else body.wasm_base64 = await fileBase64(file.files[0]);
      }
      if (await act(() => api("POST", "/plugins/" + enc(p.name) + "/reload", body), "plugin " + p.name + " reloaded")) plugins();
    };
    return row([
      h("code", {}, p.name), p.kind, "v" + p.version,
      h("td", {}, h("span", { class: "badge " + (p.healthy ? "ok" : "bad") }, p.healthy ? "healthy" : "unhealthy"), p.last_error ? h("div", { class: "muted" }, p.last_error) : null),
      numCell(p.batches), numCell(p.messages_in), numCell(p.messages_out), numCell(p.failures), p.topics.join(", ") || "-",
      h("td", {},
        h("div", {}, topicIn,
          h("button", { type: "button", class: "secondary", onclick: async () => { if (await act(() => api("POST", "/plugins/" + enc(p.name) + "/attach", { topic: topicIn.value.trim() }), "attached")) plugins(); } }, "Attach"),
          h("button", { type: "button", class: "secondary", onclick: async () => { if (await act(() => api("POST", "/plugins/" + enc(p.name) + "/detach", { topic: topicIn.value.trim() }), "detached")) plugins(); } }, "Detach")),
        h("div", {}, file, h("button", { type: "button", class: "secondary", onclick: reload }, "Reload")),
        h("div", {}, h("label", {}, force, " detach first"),
          h("button", { type: "button", class: "danger", onclick: async () => { if (await act(() => api("DELETE", "/plugins/" + enc(p.name) + (force.checked ? "?force=true" : "")), "plugin " + p.name + " unloaded")) plugins(); } }, "Unload"))),
    ], null, { "data-plugin": p.name });
  });
  const name = h("input", { id: "plugin-name", required: true, placeholder: "name" });
  const file = h("input", { id: "plugin-file", type: "file", accept: ".wasm,.wat" });
  const config = h("textarea", { id: "plugin-config", placeholder: "name=value, one per line" });
  const mem = h("input", { id: "plugin-memory", type: "number", min: 0, placeholder: "default" });
  const ms = h("input", { id: "plugin-time", type: "number", min: 0, placeholder: "default" });
  const form = h("form", { class: "inline", id: "plugin-load", onsubmit: async (e) => {
    e.preventDefault();
    if (!file.files[0]) { notice("choose a .wasm (or .wat) file", "error"); return; }
    let body;
    try { body = { name: name.value.trim(), config: pairs(config.value) }; } catch (err) { notice(err.message, "error"); return; }
    if (/\.wat$/.test(file.files[0].name)) body.wat = await file.files[0].text();
    else body.wasm_base64 = await fileBase64(file.files[0]);
    if (mem.value) body.memory_limit_bytes = Number(mem.value) * 1048576;
    if (ms.value) body.time_limit_ms = Number(ms.value);
    if (await act(() => api("POST", "/plugins", body), "plugin " + body.name + " loaded")) plugins();
  } }, field("Name", name), field("Module", file), field("Config", config), field("Memory (MiB)", mem), field("Time per batch (ms)", ms), h("button", { type: "submit" }, "Load plugin"));
  view.replaceChildren(h("h2", {}, "Plugins"),
    table(["Name", "Kind", "Version", "Health", { label: "Batches", num: 1 }, { label: "In", num: 1 }, { label: "Out", num: 1 }, { label: "Failures", num: 1 }, "Ingress on", "Actions"], rows, { id: "plugins-table", empty: "no plugins loaded" }),
    h("h3", {}, "Load a plugin"), form);
}

// ---- routing -------------------------------------------------------------------------

const pages = {
  overview: () => overview(),
  topics: () => topics(),
  topic: (a) => topic(a),
  groups: () => groups(),
  group: (a) => group(a),
  messages: () => messages(),
  dlq: (a) => (a ? dlq(a) : dlqs()),
  plugins: () => plugins(),
};

async function render() {
  if (timer) { clearInterval(timer); timer = null; }
  const [page, ...rest] = (location.hash.slice(1) || "overview").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : undefined;
  const key = pages[page] ? page : "overview";
  const navKey = { topic: "topics", group: "groups" }[key] || key;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === navKey);
  try {
    await pages[key](arg);
    document.body.dataset.page = key;
  } catch (e) {
    view.replaceChildren(h("p", { class: "muted" }, "Could not load this page: " + e.message));
    notice(e.message, "error");
  }
}

function useToken(t) {
  token = t;
  if (t) sessionStorage.setItem("quiver-token", t);
  else sessionStorage.removeItem("quiver-token");
  document.getElementById("token-box").hidden = !!t || document.getElementById("token-box").hidden;
  showUser();
  render();
}

// Who the console acts as, in the header, with a log-out button for a login.
async function showUser() {
  try {
    const w = await api("GET", "/whoami");
    document.getElementById("whoami").textContent = w.user ? "as " + w.user : "";
    document.getElementById("logout").hidden = !w.user;
  } catch (_) {
    document.getElementById("whoami").textContent = "";
    document.getElementById("logout").hidden = true;
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  useToken(document.getElementById("token-input").value);
});
document.getElementById("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const user = document.getElementById("login-user").value;
  const password = document.getElementById("login-password").value;
  const r = await act(() => api("POST", "/login", { user, password }));
  document.getElementById("login-password").value = "";
  if (r && r.token) {
    document.getElementById("token-box").hidden = true;
    notice("");
    useToken(r.token);
  }
});
document.getElementById("logout").addEventListener("click", async () => {
  await act(() => api("POST", "/logout"));
  useToken("");
  document.getElementById("token-box").hidden = false;
});
showUser();
window.addEventListener("hashchange", () => { notice(""); render(); });
api("GET", "/overview").then((o) => {
  document.getElementById("broker-name").textContent = o.broker + " · " + o.role;
  document.title = o.broker + " · Quiver console";
}).catch(() => {});
render();
