// MicroFACS demo: upload an image to an analysis endpoint, draw the result over it (same colours as app/render.py).
"use strict";

const COLOURS = { kept: "#00ff00", filtered: "#ff3b30", au: "#ffb000" };
const PREFERRED = ["/analyze", "/recognize-expression", "/detect-au", "/detect-faces"];
const BOTH = "/detect-au + /recognize-expression";

const $ = (id) => document.getElementById(id);
let currentFile = null;
let currentBitmap = null;
let endpointsReady = null;

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "";
  el.dataset.state = isError ? "error" : (text.startsWith("done") ? "done" : "busy");
}

async function loadEndpoints() {
  let paths = {};
  try {
    paths = (await (await fetch("/openapi.json")).json()).paths || {};
  } catch (e) { /* fall back to the one that always exists */ }
  const available = PREFERRED.filter((p) => paths[p] && paths[p].post);
  // Without /analyze, AUs and expression come from two calls, merged per face (as the CLI does).
  if (!available.includes("/analyze") && available.includes("/detect-au") && available.includes("/recognize-expression")) {
    available.unshift(BOTH);
  }
  const select = $("endpoint");
  for (const p of (available.length ? available : ["/detect-faces"])) {
    const option = document.createElement("option");
    option.value = p; option.textContent = p;
    select.appendChild(option);
  }
}

function label(ctx, text, x, y, colour, above, scale) {
  ctx.font = `${Math.round(13 * scale)}px sans-serif`;
  const pad = 3 * scale, h = 16 * scale, w = ctx.measureText(text).width + 2 * pad;
  const top = above ? Math.max(0, y - h) : y;
  const left = Math.max(0, Math.min(x, ctx.canvas.width - w));
  ctx.fillStyle = colour;
  ctx.fillRect(left, top, w, h);
  ctx.fillStyle = "#000";
  ctx.textBaseline = "middle";
  ctx.fillText(text, left + pad, top + h / 2);
  return top + h;
}

function draw(result) {
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  canvas.width = currentBitmap.width; canvas.height = currentBitmap.height;
  ctx.drawImage(currentBitmap, 0, 0);
  const scale = Math.max(0.8, Math.min(canvas.width, canvas.height) / 500);
  const list = $("faces");
  list.innerHTML = "";
  for (const face of result.faces || []) {
    const colour = face.filtered ? COLOURS.filtered : COLOURS.kept;
    const b = face.box;
    for (const au of face.action_units || []) {
      if (au.present && au.box) {
        ctx.strokeStyle = COLOURS.au; ctx.lineWidth = Math.max(1, 1.5 * scale);
        ctx.strokeRect(au.box.x, au.box.y, au.box.width, au.box.height);
        label(ctx, `${au.au} ${au.probability.toFixed(2)}`, au.box.x, au.box.y, COLOURS.au, true, 0.8 * scale);
      }
    }
    ctx.strokeStyle = colour; ctx.lineWidth = Math.max(2, 3 * scale);
    ctx.strokeRect(b.x, b.y, b.width, b.height);
    let head = `#${face.face_id} ${face.confidence.toFixed(2)}`;
    if (face.filtered) head += " filtered: " + face.filter_reasons.join(",");
    label(ctx, head, b.x, b.y, colour, true, scale);
    let below = b.y + b.height;
    if (face.expression) {
      const e = face.expression;
      below = label(ctx, `appears: ${e.label} ${e.confidence.toFixed(2)}${e.uncertain ? " (uncertain)" : ""}`,
        b.x, below, colour, false, scale);
    }
    const present = (face.action_units || []).filter((a) => a.present).map((a) => a.au);
    const item = document.createElement("li");
    item.textContent = `face ${face.face_id}: yaw ${face.pose.yaw}°, pitch ${face.pose.pitch}°` +
      (face.filtered ? `, excluded (${face.filter_reasons.join(", ")})` : "") +
      (face.expression ? `, appears to show ${face.expression.label}` : "") +
      (present.length ? `, AUs ${present.join(" ")}` : "");
    list.appendChild(item);
  }
}

function merge(bodies) {
  const merged = bodies[0];
  for (const other of bodies.slice(1)) {
    for (const face of merged.faces) {
      const twin = other.faces.find((f) => f.face_id === face.face_id) || {};
      if (twin.expression !== undefined) face.expression = twin.expression;
      if (twin.action_units !== undefined) face.action_units = twin.action_units;
    }
    for (const [k, v] of Object.entries(other.timings_ms || {})) merged.timings_ms[k] = (merged.timings_ms[k] || 0) + v;
  }
  return merged;
}

async function analyse() {
  if (!currentFile) return;
  setStatus("analysing…");
  await endpointsReady;
  const params = new URLSearchParams({
    side_face_filter: $("side_face_filter").checked,
    occlusion_filter: $("occlusion_filter").checked,
  });
  const form = new FormData();
  form.append("file", currentFile, currentFile.name || "image");
  const headers = {};
  if ($("apikey").value) headers["X-API-Key"] = $("apikey").value;
  const endpoint = $("endpoint").value;
  const paths = endpoint === BOTH ? ["/detect-au", "/recognize-expression"] : [endpoint];
  try {
    const [bitmap, ...responses] = await Promise.all([
      createImageBitmap(currentFile, { imageOrientation: "from-image" }),
      ...paths.map((path) => fetch(`${path}?${params}`, { method: "POST", body: form, headers })),
    ]);
    currentBitmap = bitmap;
    const bodies = await Promise.all(responses.map((r) => r.json()));
    const failed = responses.findIndex((r) => !r.ok);
    const body = failed >= 0 ? bodies[failed] : merge(bodies);
    $("json").textContent = JSON.stringify(body, null, 2);
    if (failed >= 0) {
      const status = responses[failed].status;
      setStatus(`error ${status}: ${body.error ? body.error.code + " — " + body.error.message : ""}`, true);
      return;
    }
    draw(body);
    setStatus(`done: ${body.faces.length} face(s) in ${Object.values(body.timings_ms).reduce((a, b) => a + b, 0).toFixed(0)} ms`);
  } catch (e) {
    setStatus(`error: ${e}`, true);
  }
}

function choose(file) {
  if (!file) return;
  currentFile = file;
  analyse();
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
for (const id of ["side_face_filter", "occlusion_filter", "endpoint"]) $(id).addEventListener("change", analyse);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  choose(e.dataTransfer.files[0]);
});
endpointsReady = loadEndpoints();
