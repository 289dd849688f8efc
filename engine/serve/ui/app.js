// vistream web UI: dashboard, live view, calibration editor. Plain JS, no build step.
// Routes: #/ (dashboard), #/streams/NAME (live view), #/streams/NAME/calibrate (editor).
"use strict";

const view = document.getElementById("view");
const crumb = document.getElementById("crumb");
const tokenInput = document.getElementById("token");
let timers = [];
let closers = [];

// ---- helpers ---------------------------------------------------------------------------

// One line per broker: state, events it acknowledged, events still waiting in the spool.
function delivery(stats) {
  if (!stats) return "no broker";
  const brokers = Object.entries(stats.publishers || {});
  if (!brokers.length) return "no broker";
  return brokers.map(([url, p]) => `${url}: ${p.state}, ${p.published} sent, ${p.pending} waiting`).join("; ");
}

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function token() { return localStorage.getItem("vistream-token") || ""; }

function withToken(url) {
  return token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url;
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!response.ok) {
    const reason = data && data.detail ? data.detail : `HTTP ${response.status}`;
    throw new Error(response.status === 401 ? `${reason} — enter the token at the top right` : reason);
  }
  return data;
}

function every(ms, fn) { fn(); timers.push(setInterval(fn, ms)); }

function fmt(value, digits = 1) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }

function stateBadge(state) { return `<span class="state ${esc(state)}">${esc(state)}</span>`; }

function setMessage(element, text, kind) {
  element.textContent = text || "";
  element.className = `message ${kind || ""}`;
}

// ---- dashboard -------------------------------------------------------------------------

async function dashboard() {
  crumb.textContent = "";
  view.innerHTML = `
    <div class="card">
      <h2>Add a stream</h2>
      <form class="add" id="add">
        <label>name <input name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}" placeholder="cam1"></label>
        <label>URI <input name="uri" class="uri" required placeholder="rtsp://user:pass@host/stream, test://?fps=10, /path/video.mp4"></label>
        <label>pipeline <select name="pipeline" id="pipelines"></select></label>
        <button type="submit">Add stream</button>
      </form>
      <div class="message" id="add-message" role="status"></div>
    </div>
    <table id="streams">
      <thead><tr><th>stream</th><th>state</th><th>URI</th><th>pipeline</th><th>fps</th><th>age p50 / p99 ms</th>
      <th>dropped</th><th>reconnects</th><th>restarts</th><th>pid</th><th>last error</th><th></th></tr></thead>
      <tbody></tbody>
    </table>`;
  const select = document.getElementById("pipelines");
  try {
    for (const pipeline of await api("GET", "/api/pipelines")) {
      const option = document.createElement("option");
      option.value = option.textContent = pipeline.name;
      if (pipeline.name === "default") option.selected = true;
      select.appendChild(option);
    }
  } catch (error) { setMessage(document.getElementById("add-message"), error.message, "error"); }
  document.getElementById("add").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const message = document.getElementById("add-message");
    try {
      const stream = await api("POST", "/api/streams", { name: form.get("name"), uri: form.get("uri"), pipeline: form.get("pipeline") });
      setMessage(message, `Added ${stream.name}; its worker is starting.`, "ok");
      event.target.reset();
      select.value = "default";
      refresh();
    } catch (error) { setMessage(message, error.message, "error"); }
  });
  const tbody = document.querySelector("#streams tbody");
  async function refresh() {
    let streams;
    try { streams = await api("GET", "/api/streams"); } catch { return; }
    tbody.innerHTML = streams.length ? streams.map((s) => `
      <tr data-stream="${esc(s.name)}">
        <td><a href="#/streams/${encodeURIComponent(s.name)}">${esc(s.name)}</a></td>
        <td>${stateBadge(s.state)}</td>
        <td title="${esc(s.uri)}">${esc(s.uri.length > 48 ? s.uri.slice(0, 45) + "…" : s.uri)}</td>
        <td>${esc(s.pipeline)}</td>
        <td class="num fps">${fmt(s.fps)}</td>
        <td class="num">${fmt(s.frame_age_p50_ms, 0)} / ${fmt(s.frame_age_p99_ms, 0)}</td>
        <td class="num">${s.dropped ?? 0}</td>
        <td class="num">${s.reconnects ?? 0}</td>
        <td class="num">${s.worker_restarts ?? 0}</td>
        <td class="num">${s.pid ?? "–"}${s.node ? ` <span title="cluster node ${esc(s.node)}">@ ${esc(s.node_ip || "")} ${esc(s.node.slice(0, 8))}</span>` : ""}</td>
        <td class="error">${esc(s.last_error || "")}</td>
        <td><a href="#/streams/${encodeURIComponent(s.name)}">live</a> ·
            <a href="#/streams/${encodeURIComponent(s.name)}/calibrate">calibrate</a> ·
            <button class="danger remove" data-name="${esc(s.name)}">remove</button></td>
      </tr>`).join("") : `<tr><td colspan="12" class="muted">No streams yet: add one above.</td></tr>`;
  }
  tbody.addEventListener("click", async (event) => {
    const button = event.target.closest("button.remove");
    if (!button) return;
    if (!confirm(`Remove stream ${button.dataset.name}? Its outputs stay on disk.`)) return;
    try { await api("DELETE", `/api/streams/${encodeURIComponent(button.dataset.name)}`); refresh(); }
    catch (error) { setMessage(document.getElementById("add-message"), error.message, "error"); }
  });
  every(1000, refresh);
}

// ---- live view -------------------------------------------------------------------------

function live(name) {
  const path = `/api/streams/${encodeURIComponent(name)}`;
  crumb.innerHTML = `› <a href="#/streams/${encodeURIComponent(name)}">${esc(name)}</a> › live`;
  view.innerHTML = `
    <div class="live">
      <div class="card"><img id="live" alt="live video of ${esc(name)}"></div>
      <div class="card"><h2>${esc(name)} <span id="state"></span></h2><dl class="facts" id="facts"></dl>
        <p><a href="#/streams/${encodeURIComponent(name)}/calibrate">Calibrate this view</a> ·
           <a href="${withToken(path + "/snapshot.jpg")}" target="_blank">snapshot</a></p></div>
      <div class="card"><h2>Latest events</h2><ul class="events" id="events"></ul></div>
    </div>`;
  const image = document.getElementById("live");
  const connect = () => { image.src = withToken(`${path}/live.mjpg`) + `${token() ? "&" : "?"}t=${Date.now()}`; };
  image.addEventListener("error", () => setTimeout(() => { if (document.body.contains(image)) connect(); }, 1000));
  connect();
  closers.push(() => { image.src = ""; });
  every(1000, async () => {
    let s;
    try { s = await api("GET", path); } catch (error) { document.getElementById("facts").textContent = error.message; return; }
    document.getElementById("state").innerHTML = stateBadge(s.state);
    const facts = [["URI", s.uri], ["pipeline", s.pipeline], ["fps", fmt(s.fps)],
      ["frame age p50 / p99", `${fmt(s.frame_age_p50_ms, 0)} / ${fmt(s.frame_age_p99_ms, 0)} ms`],
      ["frames", s.frames], ["dropped", s.dropped], ["reconnects", s.reconnects], ["worker restarts", s.worker_restarts],
      ["pid", s.pid ?? "–"], ["size", s.width ? `${s.width}×${s.height}` : "–"], ["calibration", s.calibration ? "own (editor)" : "pipeline's"],
      ...(s.node ? [["cluster node", `${s.node.slice(0, 12)} (${s.node_ip})`], ["moves", s.moves ?? 0]] : []),
      ["events published", delivery(s.delivery)],
      ["last error", s.last_error || "–"]];
    document.getElementById("facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  });
  const list = document.getElementById("events");
  const source = new EventSource(`${path}/events`);
  const show = (message) => {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    const { id, time, stream, seq, ...rest } = event;
    item.textContent = `${(time || "").slice(11, 19)} ${rest.type}: ${JSON.stringify(summary(rest))}`;
    list.prepend(item);
    while (list.children.length > 100) list.lastChild.remove();
  };
  for (const type of ["objects", "source_connected", "source_reconnected", "source_lost", "worker_exited", "calibration_suspect", "event"]) {
    source.addEventListener(type, show);
  }
  closers.push(() => source.close());
}

function summary(event) {
  if (event.type !== "objects") { const { type, ...rest } = event; return rest; }
  return { counts: event.counts, speeds_kmh: event.objects.filter((o) => o.speed_kmh !== undefined).map((o) => `#${o.track_id}: ${o.speed_kmh}`) };
}

// ---- calibration editor ----------------------------------------------------------------

const ROLES = ["(0, 0): first corner", "(W, 0): across the width from 1", "(W, L): along the length from 2", "(0, L): along the length from 1"];

async function calibrate(name) {
  const path = `/api/streams/${encodeURIComponent(name)}`;
  crumb.innerHTML = `› <a href="#/streams/${encodeURIComponent(name)}">${esc(name)}</a> › calibration`;
  view.innerHTML = `
    <div class="editor">
      <div class="card"><canvas id="canvas" width="640" height="480"></canvas></div>
      <div class="card side">
        <h2>Calibrate ${esc(name)}</h2>
        <div class="hint" id="hint">Loading a still frame…</div>
        <ol class="points" id="points"></ol>
        <div class="row">
          <label>width W (m), edge 1→2 <input id="width" type="number" step="0.01" min="0" placeholder="3.66"></label>
          <label>length L (m), edge 1→4 <input id="length" type="number" step="0.01" min="0" placeholder="24.19"></label>
        </div>
        <div class="message error" id="calib-error" role="alert"></div>
        <div class="muted" id="grid-label"></div>
        <div class="row">
          <button class="secondary" id="reset">Clear points</button>
          <button class="secondary" id="reload">New still frame</button>
          <button id="save" disabled>Save calibration</button>
        </div>
        <div class="message" id="save-message" role="status"></div>
        <p class="muted">Click the four corners of a rectangle lying on the road, in order. Saving writes the
        calibration file and restarts this stream's worker with it: its speed stage uses it from the next frame.</p>
      </div>
    </div>`;
  const canvas = document.getElementById("canvas");
  const context = canvas.getContext("2d");
  const errorBox = document.getElementById("calib-error");
  const widthInput = document.getElementById("width");
  const lengthInput = document.getElementById("length");
  const saveButton = document.getElementById("save");
  // The loaded calibration's mask (its zone) is kept until the points are cleared.
  let still = null, scale = 1, points = [], mask = null, grid = null, previewId = 0;

  async function loadStill() {
    let blob;
    try {
      const response = await fetch(withToken(`${path}/snapshot.jpg?raw=1`));
      if (!response.ok) throw new Error((await response.json()).detail);
      blob = await response.blob();
    } catch (error) {
      document.getElementById("hint").textContent = `No still frame: ${error.message}. Retrying…`;
      timers.push(setTimeout(loadStill, 1500));
      return;
    }
    still = await createImageBitmap(blob);
    scale = Math.max(1, Math.floor(720 / still.width));
    canvas.width = still.width * scale;
    canvas.height = still.height * scale;
    draw();
  }

  function draw() {
    if (!still) return;
    context.drawImage(still, 0, 0, canvas.width, canvas.height);
    if (grid) {
      context.save();
      context.beginPath();
      grid.zone.forEach(([x, y], i) => (i ? context.lineTo(x * scale, y * scale) : context.moveTo(x * scale, y * scale)));
      context.closePath();
      context.clip();
      context.strokeStyle = "rgba(180, 255, 0, 0.85)";
      context.lineWidth = 1.5;
      context.beginPath();
      for (const [[x1, y1], [x2, y2]] of grid.segments) {
        context.moveTo(x1 * scale, y1 * scale);
        context.lineTo(x2 * scale, y2 * scale);
      }
      context.stroke();
      context.restore();
    }
    if (points.length) {
      context.strokeStyle = "rgb(255, 40, 40)";
      context.lineWidth = 2;
      context.beginPath();
      points.forEach(([x, y], i) => (i ? context.lineTo(x * scale, y * scale) : context.moveTo(x * scale, y * scale)));
      if (points.length === 4) context.closePath();
      context.stroke();
    }
    points.forEach(([x, y], i) => {
      context.fillStyle = "rgb(255, 40, 40)";
      context.beginPath();
      context.arc(x * scale, y * scale, 5, 0, 2 * Math.PI);
      context.fill();
      context.fillStyle = "#fff";
      context.font = "bold 14px system-ui";
      context.fillText(String(i + 1), x * scale + 7, y * scale - 7);
    });
    document.getElementById("points").innerHTML = points.map(([x, y], i) => `<li>${x.toFixed(1)}, ${y.toFixed(1)} px → ${ROLES[i]}</li>`).join("");
    document.getElementById("hint").textContent = points.length < 4
      ? `Click point ${points.length + 1} of 4: ${ROLES[points.length]}.`
      : "Four points set. Type W and L; the grid shows at once. Clear the points to start again.";
  }

  async function preview() {
    grid = null;
    saveButton.disabled = true;
    document.getElementById("grid-label").textContent = "";
    const width = parseFloat(widthInput.value), length = parseFloat(lengthInput.value);
    if (points.length < 4) { setMessage(errorBox, "", "error"); draw(); return; }
    if (!(width > 0) || !(length > 0)) {
      setMessage(errorBox, "Type the rectangle's width W and length L in metres (positive numbers).", "error");
      draw();
      return;
    }
    const id = ++previewId;
    try {
      const result = await api("POST", `${path}/calibration/preview`, body());
      if (id !== previewId) return;
      grid = result;
      setMessage(errorBox, "", "error");
      document.getElementById("grid-label").textContent = `Grid: ${result.label}`;
      saveButton.disabled = false;
    } catch (error) {
      if (id !== previewId) return;
      setMessage(errorBox, error.message, "error");
    }
    draw();
  }

  function body() {
    const result = { points, width_m: parseFloat(widthInput.value), length_m: parseFloat(lengthInput.value),
                     image_size: { width: still.width, height: still.height } };
    if (mask) result.mask = mask;
    return result;
  }

  canvas.addEventListener("click", (event) => {
    if (!still || points.length >= 4) return;
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) * (canvas.width / box.width)) / scale;
    const y = ((event.clientY - box.top) * (canvas.height / box.height)) / scale;
    points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
    preview();
  });
  widthInput.addEventListener("input", preview);
  lengthInput.addEventListener("input", preview);
  document.getElementById("reset").addEventListener("click", () => { points = []; mask = null; preview(); });
  document.getElementById("reload").addEventListener("click", loadStill);
  saveButton.addEventListener("click", async () => {
    const message = document.getElementById("save-message");
    try {
      const stream = await api("PUT", `${path}/calibration`, body());
      setMessage(message, `Saved to ${stream.calibration}. The worker restarts with it.`, "ok");
    } catch (error) { setMessage(message, error.message, "error"); }
  });
  try {
    const current = await api("GET", `${path}/calibration`);
    if (!current.stages.length) setMessage(errorBox, "This stream's pipeline has no stage that takes a calibration (speed, grid): choose a traffic pipeline to save one.", "error");
    if (current.calibration) {
      points = current.calibration.points;
      mask = current.calibration.mask || null;
      widthInput.value = current.calibration.width_m;
      lengthInput.value = current.calibration.length_m;
    }
  } catch (error) { setMessage(errorBox, error.message, "error"); }
  await loadStill();
  if (points.length === 4) preview();
}

// ---- router ----------------------------------------------------------------------------

function route() {
  timers.forEach((t) => { clearInterval(t); clearTimeout(t); });
  closers.forEach((close) => close());
  timers = [];
  closers = [];
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "streams" && parts[1] && parts[2] === "calibrate") calibrate(parts[1]);
  else if (parts[0] === "streams" && parts[1]) live(parts[1]);
  else dashboard();
}

async function health() {
  try {
    const h = await api("GET", "/api/health");
    document.getElementById("health").textContent = `${h.status} · ${h.streams} stream(s) · v${h.version}`;
    document.getElementById("token-box").hidden = !h.auth;
  } catch { document.getElementById("health").textContent = "service unreachable"; }
}

tokenInput.value = token();
tokenInput.addEventListener("change", () => { localStorage.setItem("vistream-token", tokenInput.value); route(); });
window.addEventListener("hashchange", route);
health();
setInterval(health, 5000);
route();
