// The web page: submit a prompt, watch progress (Server-Sent Events read through fetch, so an API
// key can be sent), and play the video while it renders (the fragmented MP4 streamed into Media
// Source Extensions). Plain JS, no build step. `window.hyv` exposes the page's state for tests.
"use strict";

const $ = (id) => document.getElementById(id);
const FINAL = ["completed", "failed", "cancelled"];
const hyv = (window.hyv = {
  videoId: null, mode: null, streamedWhile: null, initAppendedAt: null, firstMediaAt: null, completedAt: null, events: [],
});
let current = null; // { id, abort: AbortController }

// --- API calls ------------------------------------------------------------------------------------

function apiKey() {
  return localStorage.getItem("hyv-api-key") || "";
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body.error) message = body.error.message;
    } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
  if (message && /API key/i.test(message)) $("key-box").open = true;
}

// --- the model and the form -----------------------------------------------------------------------

async function loadModel() {
  try {
    const { data } = await (await api("/v1/models")).json();
    const model = data[0];
    const image = model.supports_image ? " · image-to-video" : "";
    $("model").textContent = `${model.id} · up to ${model.max_width}x${model.max_height}, ${model.max_frames} frames${image}`;
    $("size").placeholder = `${model.defaults.width}x${model.defaults.height}`;
    $("num_frames").placeholder = model.defaults.num_frames;
    $("num_frames").max = model.max_frames;
    $("steps").placeholder = model.defaults.steps;
    $("steps").max = model.max_steps;
    $("sizes").replaceChildren(...(model.sizes || []).map((size) => new Option(size, size)));
    $("image").disabled = !model.supports_image;
  } catch (error) {
    $("model").textContent = "model unavailable";
    showError(error.message);
  }
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  for (const name of ["size", "num_frames", "steps", "seed"]) {
    const value = $(name).value.trim();
    if (value) form.append(name, value);
  }
  const file = $("image").files[0];
  if (file) form.append("input_reference", file);
  $("submit").disabled = true;
  try {
    const video = await (await api("/v1/videos", { method: "POST", body: form })).json();
    watch(video);
    refreshRecent();
  } catch (error) {
    showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
}

// --- one job: progress and playback ---------------------------------------------------------------

function watch(video) {
  if (current) current.abort.abort();
  const abort = new AbortController();
  current = { id: video.id, abort };
  Object.assign(hyv, {
    videoId: video.id, mode: null, streamedWhile: null, initAppendedAt: null, firstMediaAt: null, completedAt: null, events: [],
  });
  $("job").hidden = false;
  $("job-id").textContent = video.id;
  $("player").removeAttribute("src");
  render(video);
  if (video.status === "failed" || video.status === "cancelled") return;
  if (video.status !== "completed") followEvents(video.id, abort.signal);
  play(video.id, abort.signal);
}

function render(video) {
  $("progress").value = video.progress;
  const status = $("status");
  status.dataset.status = video.status;
  status.className = `status-${video.status}`;
  let text = `${video.status} · ${video.progress}%`;
  if (video.status === "queued" && video.queue_position) text += ` · position ${video.queue_position} in the queue`;
  if (video.status === "in_progress" && video.stage) {
    text += ` · ${video.stage.replace("_", " ")}`;
    if (video.stage === "denoise" && video.total_steps) text += ` step ${video.step}/${video.total_steps}`;
  }
  if (video.error) text += ` · ${video.error.message}`;
  status.textContent = text;
  $("cancel").hidden = FINAL.includes(video.status);
  const timings = Object.entries(video.timings || {}).map(([stage, s]) => `${stage} ${s.toFixed(2)} s`);
  $("timings").textContent = timings.length ? `${video.size} · ${video.num_frames} frames · ${timings.join(" · ")}` : "";
}

async function followEvents(id, signal) {
  try {
    const response = await api(`/v1/videos/${id}/events`, { signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
      let end;
      while ((end = text.indexOf("\n\n")) >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        const fields = Object.fromEntries(
          block.split("\n").filter((line) => line && !line.startsWith(":")).map((line) => {
            const colon = line.indexOf(":");
            return [line.slice(0, colon), line.slice(colon + 1).trimStart()];
          })
        );
        if (!fields.data) continue;
        const video = JSON.parse(fields.data);
        hyv.events.push(fields.event);
        if (current && current.id === id) render(video);
        if (FINAL.includes(video.status)) {
          hyv.completedAt = performance.now();
          refreshRecent();
        }
      }
    }
  } catch (error) {
    if (!signal.aborted) showError(`progress stream ended: ${error.message}`);
  }
}

function concat(a, b) {
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

// The H.264 codec string ("avc1.PPCCLL") from the avcC box of the MP4's init segment.
function avcCodec(bytes) {
  for (let i = 0; i + 8 <= bytes.length; i++) {
    if (bytes[i] === 0x61 && bytes[i + 1] === 0x76 && bytes[i + 2] === 0x63 && bytes[i + 3] === 0x43) {
      const hex = (n) => n.toString(16).padStart(2, "0");
      return `avc1.${hex(bytes[i + 5])}${hex(bytes[i + 6])}${hex(bytes[i + 7])}`;
    }
  }
  return null;
}

async function play(id, signal) {
  if (!window.MediaSource) return playWhenDone(id, signal);
  let reader;
  try {
    const response = await api(`/v1/videos/${id}/content`, { signal });
    hyv.streamedWhile = response.headers.get("X-Video-Status"); // null: the finished file
    reader = response.body.getReader();
  } catch (error) {
    if (!signal.aborted) showError(error.message);
    return;
  }
  let pending = new Uint8Array(0);
  let codec = null;
  let done = false;
  while (!codec && !done) { // the first bytes are the init segment: it names the codec
    const chunk = await reader.read().catch(() => ({ done: true }));
    done = chunk.done;
    if (chunk.value) pending = concat(pending, chunk.value);
    codec = avcCodec(pending);
  }
  const mime = `video/mp4; codecs="${codec}"`;
  if (!codec || !MediaSource.isTypeSupported(mime)) {
    reader.cancel().catch(() => {});
    return playWhenDone(id, signal);
  }
  hyv.mode = "mse";
  const player = $("player");
  const source = new MediaSource();
  player.src = URL.createObjectURL(source);
  await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
  const buffer = source.addSourceBuffer(mime);
  const append = (data) => new Promise((resolve, reject) => {
    buffer.addEventListener("updateend", resolve, { once: true });
    buffer.addEventListener("error", () => reject(new Error("the browser could not decode the stream")), { once: true });
    buffer.appendBuffer(data);
  });
  try {
    await append(pending);
    hyv.initAppendedAt = performance.now();
    while (!done) {
      const chunk = await reader.read();
      done = chunk.done;
      if (chunk.value) {
        await append(chunk.value);
        if (!hyv.firstMediaAt) hyv.firstMediaAt = performance.now();
        player.play().catch(() => {});
      }
    }
    source.endOfStream();
    player.play().catch(() => {});
  } catch (error) {
    if (signal.aborted) return;
    if (source.readyState === "open") source.endOfStream("network");
    showError(`video stream ended early: ${error.message}`);
  }
}

// Without MSE support: wait for the job, then play the finished file.
async function playWhenDone(id, signal) {
  hyv.mode = "file";
  for (;;) {
    if (signal.aborted) return;
    const video = await (await api(`/v1/videos/${id}`)).json();
    if (video.status === "completed") break;
    if (FINAL.includes(video.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  const blob = await (await api(`/v1/videos/${id}/content`, { signal })).blob();
  $("player").src = URL.createObjectURL(blob);
  $("player").play().catch(() => {});
}

// --- recent videos ----------------------------------------------------------------------------------

async function refreshRecent() {
  try {
    const { data } = await (await api("/v1/videos?limit=10")).json();
    $("recent").replaceChildren(...data.map((video) => {
      const item = document.createElement("li");
      item.dataset.id = video.id;
      const cells = [
        new Date(video.created_at * 1000).toLocaleTimeString(),
        video.status,
        `${video.size} · ${video.num_frames}f`,
        video.prompt || "",
      ];
      item.replaceChildren(...cells.map((text, index) => {
        const span = document.createElement("span");
        span.textContent = text;
        if (index === 1) span.className = `status-${video.status}`;
        return span;
      }));
      item.addEventListener("click", () => watch(video));
      return item;
    }));
  } catch (error) {
    if (error.status !== 401) showError(error.message);
  }
}

// --- wiring -------------------------------------------------------------------------------------------

$("create-form").addEventListener("submit", submit);
$("refresh").addEventListener("click", refreshRecent);
$("cancel").addEventListener("click", async () => {
  if (!current) return;
  try {
    await api(`/v1/videos/${current.id}`, { method: "DELETE" });
  } catch (error) {
    showError(error.message);
  }
});
$("api-key").value = apiKey();
$("api-key").addEventListener("change", () => {
  localStorage.setItem("hyv-api-key", $("api-key").value.trim());
  showError("");
  loadModel();
  refreshRecent();
});
loadModel();
refreshRecent();
