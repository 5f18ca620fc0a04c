// micro's dashboard: the little script the server-rendered pages need. It calls endpoints from their forms
// (POST /api/call/…, as the logged-in user, with the session's CSRF token), follows live streams (Server-Sent
// Events), refreshes the runtime table, and runs the pages' action forms. No dependencies, no build step.
"use strict";

const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

/** Element helper: el("p", {class: "error", role: "alert"}, "text"). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

/** The error JSON of the gateway ({id, code, detail, status}) or a plain text, as one message. */
async function errorText(rsp) {
  const text = await rsp.text();
  try {
    const e = JSON.parse(text);
    return e.detail || e.message || text;
  } catch (_) {
    return text || rsp.statusText || "HTTP " + rsp.status;
  }
}

/** Shows `message` as the error of `container` (replacing an earlier one), or clears it for null. */
function showError(container, message) {
  container.querySelectorAll(":scope > p.error, :scope > .result > p.error").forEach((p) => p.remove());
  if (message == null) return;
  const p = el("p", { class: "error", role: "alert" }, message);
  const result = container.querySelector(":scope > .result");
  if (result) result.prepend(p);
  else container.append(p);
}

/** Calls an endpoint as the session's user. Resolves to the Response (ok or not); throws on a network error. */
function call(service, endpoint, body, signal) {
  return fetch(`/api/call/${encodeURIComponent(service)}/${encodeURIComponent(endpoint)}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: typeof body === "string" ? body : JSON.stringify(body),
    credentials: "same-origin",
    signal,
  });
}

// ---- Forms generated from request schemas -------------------------------------------------------------------

/** The value of one control, as proto JSON wants it; undefined for an empty one (the field is left out). */
function controlValue(control, kind) {
  if (control.type === "checkbox") return control.checked ? true : undefined;
  const text = control.value;
  if (text === "") return undefined;
  switch (kind) {
    case "int": {
      const n = Number(text);
      if (!Number.isInteger(n)) throw new Error(`${control.name}: ${JSON.stringify(text)} is not a whole number`);
      return n;
    }
    case "int64":
      if (!/^-?\d+$/.test(text.trim())) throw new Error(`${control.name}: ${JSON.stringify(text)} is not a whole number`);
      return text.trim();
    case "float": {
      const n = Number(text);
      if (Number.isNaN(n)) throw new Error(`${control.name}: ${JSON.stringify(text)} is not a number`);
      return n;
    }
    case "json":
      try {
        return JSON.parse(text);
      } catch (e) {
        throw new Error(`${control.name}: not JSON (${e.message})`);
      }
    default:
      return text;
  }
}

/** A value of a list item or a map entry's value: `.value[data-kind]` holds a control or nested fields. */
function itemValue(holder) {
  const kind = holder.dataset.kind;
  if (kind === "message") return collect(holder.querySelector(":scope > .fields")) || {};
  const control = holder.querySelector("input, select, textarea");
  if (kind === "bool") return control.checked;
  const v = controlValue(control, kind);
  return v === undefined ? (kind === "string" || kind === "bytes" ? "" : undefined) : v;
}

/** Reads a `.fields` element back into a JSON object (undefined when nothing is set). */
function collect(fields) {
  const out = {};
  for (const field of fields.querySelectorAll(":scope > .field")) {
    const name = field.dataset.field;
    const kind = field.dataset.kind;
    let value;
    if (kind === "message") {
      value = collect(field.querySelector(":scope > .fields"));
    } else if (kind === "list") {
      const items = [...field.querySelectorAll(":scope > .items > .item")];
      value = items.map((item) => itemValue(item.querySelector(":scope > .value"))).filter((v) => v !== undefined);
      if (!value.length) value = undefined;
    } else if (kind === "map") {
      const entries = {};
      for (const item of field.querySelectorAll(":scope > .items > .item")) {
        const key = item.querySelector(":scope input.key, :scope label > input.key");
        const k = key ? key.value : "";
        if (k === "") continue;
        entries[k] = itemValue(item.querySelector(":scope > .value"));
      }
      value = Object.keys(entries).length ? entries : undefined;
    } else {
      value = controlValue(field.querySelector("input, select, textarea"), kind);
    }
    if (value !== undefined) out[name] = value;
  }
  return Object.keys(out).length ? out : undefined;
}

/** The request of a call form: the raw JSON when that mode is on, else the form's fields. */
function request(form) {
  const raw = form.querySelector(".raw");
  if (raw && !raw.hidden) {
    const text = raw.querySelector("textarea").value.trim() || "{}";
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Error(`The request is not JSON: ${e.message}`);
    }
  }
  return collect(form.querySelector(".form > .fields")) || {};
}

/** The body of a call: one JSON object, or for client streams the lines to send (NDJSON). */
function body(form, section) {
  const lines = form.querySelector("textarea.lines");
  if (lines) {
    const sent = lines.value.split("\n").map((l) => l.trim()).filter(Boolean);
    if (sent.length) {
      sent.forEach((line, i) => {
        try {
          JSON.parse(line);
        } catch (e) {
          throw new Error(`Line ${i + 1} of the messages is not JSON: ${e.message}`);
        }
      });
      return sent.join("\n") + "\n";
    }
  }
  return JSON.stringify(request(form)) + (section.dataset.stream === "client" || section.dataset.stream === "bidi" ? "\n" : "");
}

const quote = (s) => "'" + String(s).replace(/'/g, "'\\''") + "'";

/** The command that makes the same call: the micro CLI, grpcurl or curl. */
function command(kind, form, section) {
  const json = JSON.stringify(request(form));
  const token = '"Authorization: Bearer $(micro user token)"';
  switch (kind) {
    case "cli":
      return `micro call ${section.dataset.service} ${section.dataset.endpoint} ${quote(json)}`;
    case "grpcurl": {
      const tls = form.dataset.api.startsWith("https:") ? "" : "-plaintext ";
      return `grpcurl ${tls}-H ${token} -d ${quote(json)} ${form.dataset.proxy} ${form.dataset.method}`;
    }
    default:
      return `curl ${form.dataset.api}${form.dataset.path} -H ${token} -H 'Content-Type: application/json' -d ${quote(json)}`;
  }
}

/** Renders the messages of an answer: pretty JSON, or one compact line each. */
function renderAnswer(pre, messages, compact) {
  pre.textContent = messages.map((m) => JSON.stringify(m, null, compact ? 0 : 2)).join("\n");
}

async function submitCall(form, section) {
  const status = section.querySelector("output.status");
  const pre = section.querySelector("pre.answer");
  const compact = section.querySelector("input.raw-answer");
  const submit = form.querySelector("button[type=submit]");
  const stop = form.querySelector("button.stop");
  let payload;
  try {
    payload = body(form, section);
  } catch (e) {
    showError(section, e.message);
    status.textContent = "not sent";
    status.className = "status bad";
    return;
  }
  showError(section, null);
  const messages = [];
  section.messages = messages;
  pre.textContent = "";
  status.className = "status";
  status.textContent = "calling…";
  submit.disabled = true;
  const aborter = new AbortController();
  const streaming = section.dataset.stream === "server" || section.dataset.stream === "bidi";
  if (streaming) {
    stop.hidden = false;
    stop.onclick = () => aborter.abort();
  }
  const started = performance.now();
  const elapsed = () => `${Math.round(performance.now() - started)} ms`;
  const count = () => (streaming ? ` · ${messages.length} message${messages.length === 1 ? "" : "s"}` : "");
  let failure = null;
  try {
    const rsp = await call(section.dataset.service, section.dataset.endpoint, payload, aborter.signal);
    if (!rsp.ok) {
      failure = `${rsp.status} ${rsp.statusText}`.trim();
      showError(section, await errorText(rsp));
      if (rsp.status === 401) setTimeout(() => location.assign("/login?next=" + encodeURIComponent(location.pathname)), 1500);
    } else if ((rsp.headers.get("content-type") || "").includes("ndjson")) {
      const reader = rsp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (!line) continue;
          const message = JSON.parse(line);
          if (message && message.error && Object.keys(message).length === 1) {
            failure = message.error.status || "error";
            showError(section, message.error.detail || JSON.stringify(message.error));
            continue;
          }
          messages.push(message);
          renderAnswer(pre, messages, compact.checked);
          pre.scrollTop = pre.scrollHeight;
          status.textContent = `receiving${count()} · ${elapsed()}`;
        }
      }
    } else {
      messages.push(await rsp.json());
      renderAnswer(pre, messages, compact.checked);
    }
  } catch (e) {
    if (e.name === "AbortError") failure = "stopped";
    else {
      failure = "failed";
      showError(section, `The call did not complete: ${e.message}`);
    }
  } finally {
    submit.disabled = false;
    stop.hidden = true;
  }
  status.textContent = failure ? `${failure}${count()} · ${elapsed()}` : `OK${count()} · ${elapsed()}`;
  status.className = failure ? "status bad" : "status ok";
}

function setupCallForm(form) {
  const section = form.closest("section.endpoint");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submitCall(form, section);
  });
  // Form or raw JSON: switching to raw carries the form's values over.
  form.querySelectorAll("fieldset.mode input[type=radio]").forEach((radio) =>
    radio.addEventListener("change", () => {
      const raw = radio.value === "json";
      if (raw) {
        try {
          form.querySelector(".raw textarea").value = JSON.stringify(collect(form.querySelector(".form > .fields")) || {}, null, 2);
        } catch (e) {
          showError(section, e.message);
        }
      }
      form.querySelector(".raw").hidden = !raw;
      form.querySelector(".form").hidden = raw;
    }),
  );
  form.addEventListener("click", (e) => {
    const add = e.target.closest("button.add");
    if (add) {
      const fieldset = add.closest("fieldset");
      const row = fieldset.querySelector(":scope > template").content.firstElementChild.cloneNode(true);
      fieldset.querySelector(":scope > .items").append(row);
      const first = row.querySelector("input, select, textarea");
      if (first) first.focus();
      return;
    }
    const remove = e.target.closest("button.remove");
    if (remove) {
      const fieldset = remove.closest("fieldset");
      remove.closest(".item").remove();
      fieldset.querySelector(":scope > button.add").focus();
      return;
    }
    const line = e.target.closest("button.add-line");
    if (line) {
      try {
        const lines = form.querySelector("textarea.lines");
        lines.value = (lines.value.trim() ? lines.value.trimEnd() + "\n" : "") + JSON.stringify(request(form));
        showError(section, null);
      } catch (err) {
        showError(section, err.message);
      }
      return;
    }
    const copy = e.target.closest("button[data-copy]");
    if (copy) {
      const pre = form.querySelector("pre.command");
      try {
        pre.textContent = command(copy.dataset.copy, form, section);
      } catch (err) {
        showError(section, err.message);
        return;
      }
      if (navigator.clipboard) navigator.clipboard.writeText(pre.textContent).catch(() => {});
      const range = document.createRange();
      range.selectNodeContents(pre);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
  });
  const compact = section.querySelector("input.raw-answer");
  compact.addEventListener("change", () => {
    if (section.messages && section.messages.length) renderAnswer(section.querySelector("pre.answer"), section.messages, compact.checked);
  });
}

// ---- Live pages ---------------------------------------------------------------------------------------------

/** Follows a stream of Server-Sent Events at `url`: `onItem(json)` per message; the status line says how it goes. */
function follow(url, status, onItem) {
  const source = new EventSource(url);
  source.onopen = () => {
    status.textContent = "live";
    status.className = "status ok";
  };
  source.onmessage = (e) => {
    try {
      onItem(JSON.parse(e.data));
    } catch (_) {
      onItem({ message: e.data });
    }
  };
  source.addEventListener("error", (e) => {
    if (e.data) {
      let detail = e.data;
      try {
        detail = JSON.parse(e.data).detail || detail;
      } catch (_) {}
      status.textContent = "stopped";
      status.className = "status bad";
      showError(status.parentElement, detail);
      source.close();
      return;
    }
    // The connection ended (the server stopped, or the session did): say so rather than replay from the start.
    source.close();
    status.textContent = "disconnected: reload the page to follow again";
    status.className = "status bad";
  });
  addEventListener("pagehide", () => source.close());
  return source;
}

/** A unix time (seconds, milliseconds or nanoseconds: services differ) as the local time of day. */
const clock = (unix) => {
  const n = Number(unix);
  if (!n) return "";
  const ms = n > 1e17 ? n / 1e6 : n > 1e14 ? n / 1e3 : n > 1e11 ? n : n * 1000;
  return new Date(ms).toLocaleTimeString([], { hour12: false });
};

function setupLogs(pre) {
  const follow_ = document.getElementById("follow");
  const req = JSON.stringify({ service: pre.dataset.service, stream: true, count: 200 });
  const url = `/api/sse/runtime/Runtime.Logs?request=${encodeURIComponent(req)}&csrf=${encodeURIComponent(csrf)}`;
  follow(url, document.getElementById("logs-status"), (record) => {
    const line = el("div", { class: "line" });
    const ts = clock(record.timestamp);
    if (ts) line.append(el("span", { class: "ts" }, ts));
    line.append(record.message === undefined ? JSON.stringify(record) : String(record.message).replace(/\n$/, ""));
    if (record.metadata && record.metadata.stream === "stderr") line.classList.add("err");
    pre.append(line);
    while (pre.childElementCount > 5000) pre.firstElementChild.remove();
    if (!follow_ || follow_.checked) pre.scrollTop = pre.scrollHeight;
  });
}

function setupRegistryFeed(list) {
  const url = `/api/sse/registry/Registry.Watch?request=${encodeURIComponent("{}")}&csrf=${encodeURIComponent(csrf)}`;
  follow(url, document.getElementById("feed-status"), (result) => {
    const service = result.service || {};
    const nodes = (service.nodes || []).map((n) => n.address).filter(Boolean).join(", ");
    const action = result.action || "update";
    const item = el(
      "li",
      {},
      el("span", { class: `action ${action}` }, action),
      el("strong", {}, service.name || "?"),
      ` ${service.version || ""}`,
      nodes ? ` · ${nodes}` : "",
      el("span", { class: "muted" }, ` · ${clock(result.timestamp) || new Date().toLocaleTimeString([], { hour12: false })}`),
    );
    list.prepend(item);
    while (list.childElementCount > 500) list.lastElementChild.remove();
  });
}

function setupEventsFeed(list) {
  const url = `/api/events/tail?topic=${encodeURIComponent(list.dataset.topic)}&csrf=${encodeURIComponent(csrf)}`;
  follow(url, document.getElementById("tail-status"), (event) => {
    let payload = event.payload;
    try {
      payload = JSON.stringify(JSON.parse(payload), null, 2);
    } catch (_) {}
    list.prepend(el("li", {}, el("span", { class: "muted" }, `#${event.sequence} ${clock(event.timestamp)}`), el("pre", {}, payload)));
    while (list.childElementCount > 500) list.lastElementChild.remove();
  });
}

function setupRefresh(table) {
  const tbody = table.querySelector("tbody");
  const refresh = async () => {
    if (document.hidden) return;
    try {
      const rsp = await fetch(table.dataset.refresh, { credentials: "same-origin" });
      if (rsp.status === 401) return location.assign("/login?next=" + encodeURIComponent(location.pathname));
      if (rsp.ok) {
        const html = await rsp.text();
        if (html !== tbody.innerHTML) tbody.innerHTML = html;
      }
    } catch (_) {}
  };
  setInterval(refresh, 2000);
}

// ---- Action forms: writes, deletes, kills ---------------------------------------------------------------------

const b64 = (text) => {
  const bytes = new TextEncoder().encode(text);
  let s = "";
  bytes.forEach((b) => (s += String.fromCharCode(b)));
  return btoa(s);
};

/** The call an action form makes: [service, endpoint, request, where to go afterwards]. */
function action(form) {
  const d = form.dataset;
  const v = (name) => (form.elements[name] ? form.elements[name].value : "");
  const checked = (name) => Boolean(form.elements[name] && form.elements[name].checked);
  switch (d.action) {
    case "kill":
      return ["runtime", "Runtime.Delete", { service: { name: d.service } }, "/runtime"];
    case "update":
      return ["runtime", "Runtime.Update", { service: { name: d.service } }, null];
    case "store-write": {
      const ttl = v("ttl").trim() || "0";
      return ["store", "Store.Write", { record: { key: v("key"), value: b64(v("value")) }, options: { database: d.database, table: d.table, ttl } }, null];
    }
    case "store-delete":
      return ["store", "Store.Delete", { key: d.key, options: { database: d.database, table: d.table } }, `/store?database=${encodeURIComponent(d.database)}&table=${encodeURIComponent(d.table)}`];
    case "config-set": {
      const text = v("value");
      let data;
      try {
        JSON.parse(text);
        data = text;
      } catch (_) {
        data = JSON.stringify(text);
      }
      return ["config", "Config.Set", { path: v("path"), value: { data, format: "json" }, options: { secret: checked("secret") } }, null];
    }
    case "config-delete":
      return ["config", "Config.Delete", { path: d.path }, null];
    case "publish": {
      const text = v("payload");
      try {
        JSON.parse(text);
      } catch (e) {
        throw new Error(`The payload is not JSON: ${e.message}`);
      }
      return ["events", "Stream.Publish", { topic: d.topic, payload: b64(text) }, null];
    }
    case "account-create": {
      const scopes = v("scopes").split(",").map((s) => s.trim()).filter(Boolean);
      return ["auth", "Auth.Generate", { id: v("id"), secret: v("secret"), scopes, type: "user" }, null];
    }
    case "account-delete":
      return ["auth", "Accounts.Delete", { id: d.id }, null];
    case "rule-create": {
      const [type = "", name = "", endpoint = ""] = v("resource").split(":");
      const priority = Number(v("priority") || "0");
      return ["auth", "Rules.Create", { rule: { id: v("id"), scope: v("scope"), resource: { type, name, endpoint }, access: v("access"), priority } }, null];
    }
    case "rule-delete":
      return ["auth", "Rules.Delete", { id: d.id }, null];
    default:
      throw new Error(`unknown action ${d.action}`);
  }
}

function setupActionForm(form) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (form.dataset.confirm && !confirm(form.dataset.confirm)) return;
    let status = form.querySelector("output.status");
    if (!status) {
      status = el("output", { class: "status", "aria-live": "polite" });
      form.append(status);
    }
    showError(form, null);
    const submit = form.querySelector("button[type=submit]");
    let planned;
    try {
      planned = action(form);
    } catch (err) {
      showError(form, err.message);
      return;
    }
    const [service, endpoint, req, next] = planned;
    submit.disabled = true;
    status.className = "status";
    status.textContent = "working…";
    try {
      const rsp = await call(service, endpoint, req);
      if (!rsp.ok) {
        status.textContent = `${rsp.status} ${rsp.statusText}`.trim();
        status.className = "status bad";
        showError(form, await errorText(rsp));
        return;
      }
      status.textContent = "done";
      status.className = "status ok";
      setTimeout(() => (next ? location.assign(next) : location.reload()), 400);
    } catch (err) {
      showError(form, `The request did not complete: ${err.message}`);
    } finally {
      submit.disabled = false;
    }
  });
}

document.querySelectorAll("form.call").forEach(setupCallForm);
document.querySelectorAll("form.act").forEach(setupActionForm);
document.querySelectorAll("table[data-refresh]").forEach(setupRefresh);
const logs = document.querySelector("pre#logs[data-service]");
if (logs) setupLogs(logs);
const registryFeed = document.getElementById("registry-feed");
if (registryFeed) setupRegistryFeed(registryFeed);
const eventsFeed = document.querySelector("ol#events-feed[data-topic]");
if (eventsFeed) setupEventsFeed(eventsFeed);
