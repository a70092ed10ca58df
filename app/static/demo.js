// MicroFACS demo: upload an image to an analysis endpoint and draw the result over it (same colours as
// app/render.py), or a short clip to POST /analyze-video and draw one timeline per tracked face.
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

// Labels are placed where they overlap no label drawn before them: from the preferred spot (above or below
// the box) they move away from the box a line at a time, then to the other side; the canvas keeps the list
// (canvas.labelRects) so that the browser test can check it.
function overlaps(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

function label(ctx, text, x, y, colour, above, scale, placed, boxTop, boxBottom) {
  ctx.font = `${Math.round(13 * scale)}px sans-serif`;
  const pad = 3 * scale, h = 16 * scale, w = ctx.measureText(text).width + 2 * pad;
  const left = Math.max(0, Math.min(x, ctx.canvas.width - w));
  const clampTop = (t) => Math.max(0, Math.min(t, ctx.canvas.height - h));
  const up = (k) => clampTop((boxTop ?? y) - h * (k + 1)), down = (k) => clampTop((boxBottom ?? y) + h * k);
  const tops = [];
  for (let k = 0; k < 8; k++) tops.push(above ? up(k) : down(k));
  for (let k = 0; k < 8; k++) tops.push(above ? down(k) : up(k));
  const free = tops.map((t) => ({ x: left, y: t, w, h })).find((r) => !placed.some((p) => overlaps(r, p)));
  const rect = free || { x: left, y: tops[0], w, h };
  placed.push(rect);
  ctx.fillStyle = colour;
  ctx.fillRect(rect.x, rect.y, w, h);
  ctx.fillStyle = "#000";
  ctx.textBaseline = "middle";
  ctx.fillText(text, rect.x + pad, rect.y + h / 2);
  return rect.y + h;
}

function draw(result) {
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  canvas.width = currentBitmap.width; canvas.height = currentBitmap.height;
  ctx.drawImage(currentBitmap, 0, 0);
  const scale = Math.max(0.8, Math.min(canvas.width, canvas.height) / 500);
  const list = $("faces");
  list.innerHTML = "";
  const placed = [];
  const faces = result.faces || [];
  // Boxes first, then the labels: a label may cover a neighbour's box edge but never another label.
  for (const face of faces) {
    for (const au of face.action_units || []) {
      if (au.present && au.box) {
        ctx.strokeStyle = COLOURS.au; ctx.lineWidth = Math.max(1, 1.5 * scale);
        ctx.strokeRect(au.box.x, au.box.y, au.box.width, au.box.height);
      }
    }
    ctx.strokeStyle = face.filtered ? COLOURS.filtered : COLOURS.kept; ctx.lineWidth = Math.max(2, 3 * scale);
    ctx.strokeRect(face.box.x, face.box.y, face.box.width, face.box.height);
  }
  for (const face of faces) {
    const colour = face.filtered ? COLOURS.filtered : COLOURS.kept;
    const b = face.box;
    // a small face's label font shrinks with it (down to 60 %), so that group photos stay readable
    const faceScale = Math.max(0.6 * scale, Math.min(scale, b.width / 160));
    let head = `#${face.face_id} ${face.confidence.toFixed(2)}`;
    if (face.filtered) head += " filtered: " + face.filter_reasons.join(",");
    label(ctx, head, b.x, b.y, colour, true, faceScale, placed, b.y, b.y + b.height);
    if (face.expression) {
      const e = face.expression;
      const versus = e.reference ? " vs neutral" : "";
      label(ctx, `appears${versus}: ${e.label} ${e.confidence.toFixed(2)}${e.uncertain ? " (uncertain)" : ""}`,
        b.x, b.y + b.height, colour, false, faceScale, placed, b.y, b.y + b.height);
    }
    // AU names go on the box only where the face is large enough to hold them; the list below has them all
    if (b.width >= 220) {
      for (const au of face.action_units || []) {
        if (au.present && au.box) {
          label(ctx, `${au.au} ${au.probability.toFixed(2)}`, au.box.x, au.box.y, COLOURS.au, true, 0.8 * faceScale,
            placed, au.box.y, au.box.y + au.box.height);
        }
      }
    }
    const present = (face.action_units || []).filter((a) => a.present).map((a) => a.au);
    const item = document.createElement("li");
    item.textContent = `face ${face.face_id}: yaw ${face.pose.yaw}°, pitch ${face.pose.pitch}°` +
      (face.filtered ? `, excluded (${face.filter_reasons.join(", ")})` : "") +
      (face.expression ? `, appears to show ${face.expression.label}` : "") +
      (face.expression && face.expression.reference
        ? ` relative to the neutral reference (on its own: ${face.expression.absolute.label})` : "") +
      (present.length ? `, AUs ${present.join(" ")}` : "");
    list.appendChild(item);
  }
  if (result.reference) {
    const item = document.createElement("li");
    const ref = result.reference;
    item.textContent = `reference (${ref.source}): reads on its own as ${ref.expression.label}` +
      (ref.warnings.length ? `; ${ref.warnings.join("; ")}` : "");
    list.appendChild(item);
  }
  canvas.labelRects = placed;
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

// -- shared by images and clips ---------------------------------------------------------------------------------

let generation = 0;      // bumped by every new analysis: an answer to an older one is dropped
let pendingXhr = null;   // the clip upload in flight (aborted when another analysis starts)
let lastVideo = null;    // the last /analyze-video answer, redrawn when the window is resized

function authHeaders() {
  return $("apikey").value ? { "X-API-Key": $("apikey").value } : {};
}

function filterParams() {
  return {
    side_face_filter: $("side_face_filter").checked,
    occlusion_filter: $("occlusion_filter").checked,
  };
}

// The server answers errors as {"error": {"code", "message"}, "request_id"}; anything else (a proxy's HTML
// page, say) becomes the same shape so that the page always has a message to show.
function parseBody(text, status) {
  try {
    return JSON.parse(text);
  } catch (e) {
    return { error: { code: `http_${status}`, message: String(text).slice(0, 300) || "no body" } };
  }
}

function errorLine(status, body) {
  const err = body && body.error;
  return `error ${status}: ` + (err ? `${err.code} — ${err.message}` : "the server gave no message");
}

// Forget the previous result (image overlay, face list, timelines, JSON) before showing a new one.
function clearResults() {
  const canvas = $("canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  $("faces").innerHTML = "";
  $("timelines").innerHTML = "";
  $("json").textContent = "{}";
  lastVideo = null;
}

// Show the image overlay or the timelines (neither after an error: there is no result to show).
function showMode(mode) {
  $("image-result").hidden = mode !== "image";
  $("timelines").hidden = mode !== "video";
}

const VIDEO_EXTENSIONS = ["mp4", "mov", "webm", "mkv", "avi"];

function isVideo(file) {
  const ext = (file.name || "").split(".").pop().toLowerCase();
  return (file.type || "").startsWith("video/") || VIDEO_EXTENSIONS.includes(ext);
}

async function analyse() {
  if (!currentFile) return;
  const token = ++generation;
  if (pendingXhr) { pendingXhr.abort(); pendingXhr = null; }
  if (isVideo(currentFile)) return analyseVideo(currentFile, token);
  return analyseImage(currentFile, token);
}

// -- an image: one (or two merged) calls, the result drawn over the picture ------------------------------------

async function analyseImage(file, token) {
  setStatus("analysing…");
  await endpointsReady;
  const params = new URLSearchParams(filterParams());
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const reference = $("reference").files[0];
  if (reference) form.append("reference", reference, reference.name || "reference");
  const headers = authHeaders();
  const endpoint = $("endpoint").value;
  const paths = endpoint === BOTH ? ["/detect-au", "/recognize-expression"] : [endpoint];
  try {
    const [bitmap, ...responses] = await Promise.all([
      // a file the browser cannot decode is left to the server to explain (its JSON error is shown)
      createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null),
      ...paths.map((path) => fetch(`${path}?${params}`, { method: "POST", body: form, headers })),
    ]);
    const bodies = await Promise.all(responses.map(async (r) => parseBody(await r.text(), r.status)));
    if (token !== generation) return;
    clearResults();
    showMode("image");
    const failed = responses.findIndex((r) => !r.ok);
    const body = failed >= 0 ? bodies[failed] : merge(bodies);
    $("json").textContent = JSON.stringify(body, null, 2);
    if (failed >= 0) {
      showMode("none");
      setStatus(errorLine(responses[failed].status, body), true);
      return;
    }
    if (!bitmap) {
      showMode("none");
      setStatus("error: the server read the image but this browser cannot display it", true);
      return;
    }
    currentBitmap = bitmap;
    draw(body);
    setStatus(`done: ${body.faces.length} face(s) in ${Object.values(body.timings_ms).reduce((a, b) => a + b, 0).toFixed(0)} ms`);
  } catch (e) {
    if (token === generation) setStatus(`error: ${e}`, true);
  }
}

// -- a clip: POST /analyze-video, then one timeline per track ----------------------------------------------

// XMLHttpRequest rather than fetch: it reports the upload's progress. Resolves {status, body}.
function postVideo(file, params, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    pendingXhr = xhr;
    xhr.open("POST", `/analyze-video?${params}`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => onProgress(e.lengthComputable ? e.loaded / e.total : null, false);
    xhr.upload.onload = () => onProgress(1, true);
    xhr.onload = () => resolve({ status: xhr.status, body: parseBody(xhr.responseText, xhr.status) });
    xhr.onerror = () => reject(new Error("the request failed (is the service running?)"));
    xhr.onabort = () => reject(new Error("aborted"));
    const form = new FormData();
    form.append("file", file, file.name || "clip");
    xhr.send(form);
  });
}

function everyValue() {
  const n = Math.round(Number($("every").value));
  return Number.isFinite(n) && n >= 1 ? Math.min(n, 1000) : 1;
}

async function analyseVideo(file, token) {
  const every = everyValue();
  const params = new URLSearchParams({ every, ...filterParams() });
  if ($("video_baseline").checked) params.set("baseline", "auto");
  const nth = every === 1 ? "every frame" : `every ${ordinal(every)} frame`;
  const started = performance.now();
  let uploaded = false;
  let percent = 0;
  const tick = () => {
    if (token !== generation) return;
    const secs = ((performance.now() - started) / 1000).toFixed(0);
    setStatus(uploaded ? `analysing ${file.name} on the server (${nth})… ${secs} s`
                       : `uploading ${file.name}… ${percent}%`);
  };
  tick();
  const timer = setInterval(tick, 500);
  try {
    const { status, body } = await postVideo(file, params, (fraction, done) => {
      if (fraction !== null) percent = Math.round(100 * fraction);
      uploaded = uploaded || done;
      tick();
    });
    if (token !== generation) return;
    clearResults();
    showMode("video");
    $("json").textContent = JSON.stringify(body, null, 2);
    if (status < 200 || status >= 300 || !body.tracks) {
      showMode("none");
      setStatus(errorLine(status, body), true);
      return;
    }
    lastVideo = body;
    drawTimelines(body);
    const events = body.tracks.reduce((n, t) => n + t.events.length, 0);
    const v = body.video;
    setStatus(`done: ${body.tracks.length} track(s), ${events} event(s) in ${v.duration_s.toFixed(1)} s of video ` +
              `(${v.analysed_frames} of ${v.frames} frames analysed) in ${(body.timings_ms.total || 0).toFixed(0)} ms`);
  } catch (e) {
    if (token === generation) setStatus(`error: ${e.message || e}`, true);
  } finally {
    clearInterval(timer);
    if (token === generation) pendingXhr = null;
  }
}

function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[ones] || "th");
  return `${n}${suffix}`;
}

// -- the timeline of one track, on a <canvas> -------------------------------------------------------------------
//
//   +-----------------------------------------------------------+
//   | 1.0  AU probability (solid) / expression score (dashed)   |  curves; events shaded behind them,
//   |      curves of the AUs with events (else the top 3)       |  micro events hatched in magenta
//   | 0.0 ----------------------------------------------------- |
//   |      0 s     0.5 s     1 s ...                            |  x = seconds of the clip
//   |      [AU12 · 1.00   ]   [appears to show happiness ]      |  one band per event (packed in lanes)
//   +-----------------------------------------------------------+

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#bcbd22"];
const MICRO = "#d0006f";       // micro events (<= 0.5 s): hatched in this colour and labelled "micro"
const FILTERED = "#c7c7cc";    // frames a pre-filter excluded (no AU or expression there)
const MAX_AU_CURVES = 6;
const PLOT = { left: 40, right: 14, top: 12, height: 150, axis: 24, lane: 20 };

function drawTimelines(result) {
  const box = $("timelines");
  box.innerHTML = "";
  if (!result.tracks.length) {
    const note = document.createElement("p");
    note.textContent = "No face was tracked in this clip.";
    box.appendChild(note);
    return;
  }
  // one time axis for all tracks: the whole clip
  const ends = result.tracks.flatMap((t) => [...t.frames.map((f) => f.t), ...t.events.map((e) => e.offset_s)]);
  const duration = Math.max(result.video.duration_s || 0, 0.1, ...ends);
  for (const track of result.tracks) {
    const section = document.createElement("div");
    section.className = "track";
    const series = chooseSeries(track);
    const heading = document.createElement("h4");
    heading.textContent = trackSummary(track, result.video.fps);
    const canvas = document.createElement("canvas");
    canvas.className = "timeline";
    canvas.dataset.track = track.track_id;
    section.append(heading, canvas, legend(series, track));
    box.appendChild(section);
    drawTimeline(canvas, track, series, duration);
  }
}

function trackSummary(track, fps) {
  const seen = track.frames.length ? `, ${track.frames.length} analysed frames` : "";
  const timeOf = (frame) => (track.frames.find((f) => f.frame === frame) || { t: frame / (fps || 30) }).t;
  const from = timeOf(track.first_frame).toFixed(2), to = timeOf(track.last_frame).toFixed(2);
  return `Track ${track.track_id}: frames ${track.first_frame}–${track.last_frame} (≈${from}–${to} s${seen}), ` +
         `${summaryHeadline(track)}`;
}

// The headline comes from the track's summary (what the face showed most of the time), not from its events:
// events are departures from the person's own resting face, so a face that smiles most of the clip has few
// happiness events and its rarer departures must not become the headline.
function summaryHeadline(track) {
  const s = track.summary;
  const events = `${track.events.length} event(s)`;
  if (!s || !s.dominant_expression) return events;
  const ranked = Object.entries(s.expression_share).sort((a, b) => b[1] - a[1]);
  const shown = ranked.slice(0, 2).filter(([, share]) => share >= 0.1).map(([name, share]) =>
    `${name} ${Math.round(share * 100)}%`);
  const micro = s.events && s.events.micro ? `, ${s.events.micro} micro` : "";
  return `mostly appears to show ${shown.join(", then ")} of the analysed time — ${events}${micro}`;
}

// Which curves to draw: the AUs that have events (highest peak first, at most MAX_AU_CURVES), else the three
// AUs with the highest probability anywhere in the track; plus the expressions that have events (dashed).
function chooseSeries(track) {
  const peakOf = (kind) => {
    const peaks = new Map();
    for (const e of track.events.filter((ev) => ev.kind === kind)) peaks.set(e.name, Math.max(peaks.get(e.name) || 0, e.peak));
    return [...peaks.entries()].sort((a, b) => b[1] - a[1]).map(([name]) => name);
  };
  let aus = peakOf("au").slice(0, MAX_AU_CURVES);
  if (!aus.length) {
    const best = new Map();
    for (const f of track.frames) {
      for (const [au, p] of Object.entries(f.action_units || {})) best.set(au, Math.max(best.get(au) || 0, p));
    }
    aus = [...best.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([au]) => au);
  }
  const expressions = peakOf("expression").slice(0, 3);
  const series = [];
  aus.forEach((name) => series.push({ kind: "au", name }));
  expressions.forEach((name) => series.push({ kind: "expression", name }));
  series.forEach((s, i) => { s.colour = PALETTE[i % PALETTE.length]; });
  return series;
}

function valueAt(frame, s) {
  if (s.kind === "au") return frame.action_units ? frame.action_units[s.name] : undefined;
  return frame.expression && frame.expression.scores ? frame.expression.scores[s.name] : undefined;
}

function colourOf(series, event) {
  const s = series.find((x) => x.kind === event.kind && x.name === event.name);
  return s ? s.colour : "#666";
}

function eventLabel(e) {
  const what = e.kind === "expression" ? `appears to show ${e.name}` : e.name;
  return `${what}${e.micro ? " · micro" : ""} · ${e.peak.toFixed(2)}`;
}

// Where an event's label goes: inside its band from the onset, but a micro event's (hatched) band is
// short and busy, so its label goes just after it; kept inside the canvas (else on the band's left).
function labelX(ctx, e, x0, x1, width) {
  const w = ctx.measureText(eventLabel(e)).width;
  const x = e.micro ? x1 + 4 : x0 + 4;
  if (x + w <= width - 2) return x;
  return e.micro ? Math.max(2, x0 - w - 4) : Math.max(2, width - 2 - w);
}

// Greedy interval packing: each event goes into the first lane where its band and its label fit.
// Returns {placed: [{e, x0, x1, tx, lane}], lanes: how many lanes}.
function packLanes(ctx, events, xOf, width) {
  const edges = [];   // the right edge (px) already taken in each lane
  const placed = events.map((e) => {
    const x0 = xOf(e.onset_s);
    const x1 = Math.max(xOf(e.offset_s), x0 + 3);
    const tx = labelX(ctx, e, x0, x1, width);
    const left = Math.min(x0, tx), right = Math.max(x1, tx + ctx.measureText(eventLabel(e)).width);
    let lane = edges.findIndex((edge) => edge + 6 <= left);
    if (lane < 0) { lane = edges.length; edges.push(right); } else edges[lane] = right;
    return { e, x0, x1, tx, lane };
  });
  return { placed, lanes: edges.length };
}

function hatch(ctx, colour) {
  const tile = document.createElement("canvas");
  tile.width = tile.height = 8;
  const t = tile.getContext("2d");
  t.strokeStyle = colour; t.lineWidth = 2;
  t.beginPath(); t.moveTo(0, 8); t.lineTo(8, 0); t.moveTo(-2, 2); t.lineTo(2, -2); t.moveTo(6, 10); t.lineTo(10, 6); t.stroke();
  return ctx.createPattern(tile, "repeat");
}

function niceStep(duration, pixels) {
  const raw = duration / Math.max(2, pixels / 70);   // about one tick per 70 px
  for (const step of [0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300]) if (step >= raw) return step;
  return 600;
}

function drawTimeline(canvas, track, series, duration) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(360, canvas.parentElement.clientWidth - 18);
  const ctx = canvas.getContext("2d");
  ctx.font = "12px sans-serif";
  const plotW = width - PLOT.left - PLOT.right;
  const xOf = (t) => PLOT.left + (t / duration) * plotW;
  const yOf = (p) => PLOT.top + (1 - p) * PLOT.height;
  const events = [...track.events].sort((a, b) => a.onset_s - b.onset_s);
  const { placed: packed, lanes } = packLanes(ctx, events, xOf, width);
  const laneTop = PLOT.top + PLOT.height + PLOT.axis;
  const height = laneTop + Math.max(1, lanes) * PLOT.lane + 6;

  canvas.width = Math.round(width * dpr); canvas.height = Math.round(height * dpr);
  canvas.style.height = `${height}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, width, height);

  // frames a pre-filter excluded: grey columns behind everything
  const step = medianStep(track.frames);
  ctx.fillStyle = FILTERED;
  for (const f of track.frames) {
    if (f.filtered) ctx.fillRect(xOf(f.t - step / 2), PLOT.top, Math.max(1, xOf(step) - PLOT.left), PLOT.height);
  }

  // micro events also get a hatched magenta column behind the curves, so that they stand out (every event
  // has its coloured band in the lanes under the axis; overlapping colour columns here would turn to mud)
  for (const { e, x0, x1 } of packed) {
    if (!e.micro) continue;
    ctx.globalAlpha = 0.45; ctx.fillStyle = hatch(ctx, MICRO);
    ctx.fillRect(x0, PLOT.top, x1 - x0, PLOT.height);
    ctx.globalAlpha = 1;
  }

  drawAxes(ctx, width, duration, xOf, yOf);

  // the curves: AU probabilities solid, expression scores dashed; broken where the face was not measured
  const gap = step * 2.5;
  for (const s of series) {
    ctx.strokeStyle = s.colour; ctx.lineWidth = 2;
    ctx.setLineDash(s.kind === "expression" ? [6, 4] : []);
    ctx.beginPath();
    let prev = null;
    for (const f of track.frames) {
      const v = valueAt(f, s);
      if (v === undefined || v === null) { prev = null; continue; }
      if (prev === null || f.t - prev > gap) ctx.moveTo(xOf(f.t), yOf(v)); else ctx.lineTo(xOf(f.t), yOf(v));
      prev = f.t;
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);

  // apex markers, then one labelled band per event under the axis
  for (const { e, x0, x1, tx, lane } of packed) {
    const colour = colourOf(series, e);
    ctx.fillStyle = colour;
    ctx.beginPath(); ctx.arc(xOf(e.apex_s), yOf(e.peak), 3.5, 0, 2 * Math.PI); ctx.fill();
    const y = laneTop + lane * PLOT.lane;
    ctx.globalAlpha = 0.35; ctx.fillStyle = colour; ctx.fillRect(x0, y, x1 - x0, PLOT.lane - 4); ctx.globalAlpha = 1;
    if (e.micro) {
      ctx.fillStyle = hatch(ctx, MICRO); ctx.fillRect(x0, y, x1 - x0, PLOT.lane - 4);
      ctx.strokeStyle = MICRO; ctx.lineWidth = 1.5; ctx.strokeRect(x0, y, x1 - x0, PLOT.lane - 4);
    }
    const apex = xOf(e.apex_s);   // apex: a small triangle on the band's lower edge
    ctx.fillStyle = colour;
    ctx.beginPath(); ctx.moveTo(apex - 4, y + PLOT.lane - 4); ctx.lineTo(apex + 4, y + PLOT.lane - 4);
    ctx.lineTo(apex, y + PLOT.lane - 10); ctx.fill();
    ctx.textBaseline = "middle";
    ctx.strokeStyle = "rgba(255,255,255,0.85)"; ctx.lineWidth = 3;   // a halo keeps the label legible
    ctx.strokeText(eventLabel(e), tx, y + (PLOT.lane - 4) / 2 - 1);
    ctx.fillStyle = e.micro ? MICRO : "#1d1d1f";
    ctx.fillText(eventLabel(e), tx, y + (PLOT.lane - 4) / 2 - 1);
  }
  if (!packed.length) {
    ctx.fillStyle = "#666"; ctx.textBaseline = "middle";
    ctx.fillText("no events: nothing departs from this person's own baseline", PLOT.left, laneTop + PLOT.lane / 2);
  }
}

function medianStep(frames) {
  const d = [];
  for (let i = 1; i < frames.length; i++) d.push(frames[i].t - frames[i - 1].t);
  d.sort((a, b) => a - b);
  return d.length ? d[Math.floor(d.length / 2)] : 1 / 15;
}

function drawAxes(ctx, width, duration, xOf, yOf) {
  const bottom = yOf(0);
  ctx.strokeStyle = "#e5e5ea"; ctx.lineWidth = 1; ctx.fillStyle = "#555";
  ctx.textBaseline = "middle"; ctx.textAlign = "right";
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    ctx.beginPath(); ctx.moveTo(PLOT.left, yOf(p)); ctx.lineTo(width - PLOT.right, yOf(p)); ctx.stroke();
    if (p * 2 === Math.round(p * 2)) ctx.fillText(p.toFixed(1), PLOT.left - 6, yOf(p));
  }
  const step = niceStep(duration, width - PLOT.left - PLOT.right);
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const x = xOf(t);
    ctx.beginPath(); ctx.moveTo(x, PLOT.top); ctx.lineTo(x, bottom + 4); ctx.stroke();
    ctx.fillText(`${+t.toFixed(2)} s`, x, bottom + 6);
  }
  ctx.strokeStyle = "#8e8e93";
  ctx.beginPath(); ctx.moveTo(PLOT.left, PLOT.top); ctx.lineTo(PLOT.left, bottom); ctx.lineTo(width - PLOT.right, bottom); ctx.stroke();
  ctx.textAlign = "left";
}

function legend(series, track) {
  const div = document.createElement("div");
  div.className = "legend";
  const add = (swatchClass, style, text) => {
    const swatch = document.createElement("span");
    if (swatchClass) swatch.className = swatchClass;
    Object.assign(swatch.style, style);
    div.append(swatch, document.createTextNode(text));
  };
  for (const s of series) {
    add(s.kind === "expression" ? "line dashed" : "line", { borderTopColor: s.colour },
      s.kind === "expression" ? `appears to show ${s.name} (score)` : `${s.name} probability`);
  }
  add("", { background: "rgba(0,0,0,0.15)" }, "event: onset → offset, ▲/● apex and peak");
  add("micro-swatch", {}, "micro event (≤ 0.5 s)");
  if (track.frames.some((f) => f.filtered)) add("", { background: FILTERED }, "frame excluded by a pre-filter");
  return div;
}

function redrawOnResize() {
  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => { if (lastVideo) drawTimelines(lastVideo); }, 150);
  });
}

function choose(file) {
  if (!file) return;
  currentFile = file;
  analyse();
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
for (const id of ["side_face_filter", "occlusion_filter"]) $(id).addEventListener("change", analyse);
$("reference").addEventListener("change", () => {
  $("reference_clear").hidden = !$("reference").files.length;
  if (currentFile && !isVideo(currentFile)) analyse();
});
$("reference_clear").addEventListener("click", () => {
  $("reference").value = "";
  $("reference_clear").hidden = true;
  if (currentFile && !isVideo(currentFile)) analyse();
});
$("video_baseline").addEventListener("change", () => { if (currentFile && isVideo(currentFile)) analyse(); });
// the endpoint applies to images, "every" to clips: re-run only when it concerns the current file
$("endpoint").addEventListener("change", () => { if (currentFile && !isVideo(currentFile)) analyse(); });
$("every").addEventListener("change", () => { if (currentFile && isVideo(currentFile)) analyse(); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  choose(e.dataTransfer.files[0]);
});
endpointsReady = loadEndpoints();
redrawOnResize();
