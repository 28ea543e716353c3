// The web page: submit a prompt, watch progress (Server-Sent Events read through fetch, so an API
// key can be sent), and play the video while it renders (the fragmented MP4 streamed into Media
// Source Extensions), download it when done. Plain JS, no build step. `window.hyv` exposes the
// page's state for tests.
// The form offers exactly what the served model lists in /v1/models: its sizes and frame counts as
// dropdowns, and for a model with the built-in text encoder its caption grammar (values as chips
// that fill the prompt) and vocabulary; words outside it are flagged while typing.
// Every request carries the API key, so the MP4 and the thumbnails are fetched (not linked) and
// shown or saved from object URLs.
// A completed video (the one shown, or a row of the recent list) can be remixed or extended: the
// form then posts the prompt box's text to the remix or extensions route, and the new job is
// followed as a new generation is; the recent list says which video each derived one came from.
"use strict";

const $ = (id) => document.getElementById(id);
const FINAL = ["completed", "failed", "cancelled"];
// playback: how the video's stream ended: "ended" (the whole file), the job's status when it ended
// without a video ("cancelled", "failed"), or "error".
const FRESH = {
  videoId: null, mode: null, streamedWhile: null, initAppendedAt: null, firstMediaAt: null, completedAt: null,
  playback: null, events: [],
};
const hyv = (window.hyv = { ...FRESH, events: [] });
let current = null; // { id, abort: AbortController, cancelling: bool }

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
    let param = null;
    try {
      const body = await response.json();
      if (body.error) ({ message, param } = body.error);
    } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    error.param = param;
    throw error;
  }
  return response;
}

// The field a 422 names (its `param`) is outlined; a refused prompt opens the grammar.
const FIELD_OF = { prompt: "prompt", negative_prompt: "prompt", size: "size", num_frames: "num_frames",
  seconds: "num_frames", steps: "steps", seed: "seed" };

// An extension's length is its own dropdown (the create form's fields are put away meanwhile).
function fieldOf(param) {
  if (deriving && deriving.operation === "extend" && (param === "num_frames" || param === "seconds")) {
    return "extend-frames";
  }
  return FIELD_OF[param];
}

function showError(message, param = null) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
  box.dataset.param = param || "";
  document.querySelectorAll(".invalid").forEach((element) => element.classList.remove("invalid"));
  if (param && fieldOf(param)) $(fieldOf(param)).classList.add("invalid");
  if (param === "prompt" || param === "negative_prompt") {
    if (!$("grammar-box").hidden) $("grammar-box").open = true;
  }
  if (message && /API key/i.test(message)) $("key-box").open = true;
}

// --- the model and the form -----------------------------------------------------------------------

// A dropdown of exactly `values` where the model lists them, else the page's free input.
const freeInputs = {};

function choiceField(id, values, label) {
  const current = $(id);
  if (!freeInputs[id] && current.tagName === "INPUT") freeInputs[id] = current;
  let next = freeInputs[id];
  if (values && values.length) {
    next = document.createElement("select");
    next.id = id;
    next.name = id;
    next.replaceChildren(...values.map((value) => new Option(label(value), String(value))));
  }
  if (next !== current) current.replaceWith(next);
  next.addEventListener("change", () => next.classList.remove("invalid"));
  return next;
}

function framesLabel(frames, fps) {
  return frames === 1 ? "1 (image)" : `${frames} (${+((frames - 1) / fps).toFixed(2)} s)`;
}

async function loadModel() {
  try {
    const { data } = await (await api("/v1/models")).json();
    const model = (hyv.model = data[0]);
    const defaults = model.defaults;
    const image = model.supports_image ? " · image-to-video" : "";
    const sizes = model.sizes ? model.sizes.join(", ") : `up to ${model.max_width}x${model.max_height}`;
    const lengths = model.frame_counts ? `${model.frame_counts.join(", ")} frames` : `up to ${model.max_frames} frames`;
    $("model").textContent = `${model.id} · ${sizes} · ${lengths}${image}`;
    const size = choiceField("size", model.sizes, (value) => value);
    const defaultSize = `${defaults.width}x${defaults.height}`;
    if (size.tagName === "SELECT") size.value = defaultSize;
    else size.placeholder = defaultSize;
    const frames = choiceField("num_frames", model.frame_counts, (n) => framesLabel(n, defaults.fps));
    if (frames.tagName === "SELECT") frames.value = String(defaults.num_frames);
    else {
      frames.placeholder = defaults.num_frames;
      frames.max = model.max_frames;
    }
    $("num_frames-label").textContent = model.frame_counts ? "Frames" : "Frames (4n+1)";
    $("steps").placeholder = defaults.steps;
    $("steps").max = model.max_steps;
    $("sizes").replaceChildren();
    $("image").disabled = !model.supports_image;
    showGrammar(model);
    if (deriving && deriving.operation === "extend") fillExtendLengths(deriving.video);
  } catch (error) {
    $("model").textContent = "model unavailable";
    showError(error.message);
  }
}

// --- what the model understands: its caption grammar and vocabulary --------------------------------

let selection = {}; // slot -> the value its chips put in the prompt

// The prompt's words as the server reads them (hyv.engine.prompt_vocabulary.prompt_words): ASCII
// letters and digits, and letters, marks and symbols of other scripts; the rest separates.
function separates(char) {
  if (char.charCodeAt(0) < 128) return !/[a-z0-9]/.test(char);
  return /[\p{P}\p{Z}\p{C}]/u.test(char);
}

function promptWords(text) {
  const words = [];
  let word = "";
  for (const char of text.toLowerCase()) {
    if (separates(char)) {
      if (word) words.push(word);
      word = "";
    } else word += char;
  }
  if (word) words.push(word);
  return words;
}

function unknownWords(text) {
  const known = new Set((hyv.model && hyv.model.vocabulary) || []);
  return [...new Set(promptWords(text).filter((word) => !known.has(word)))];
}

function composePrompt(grammar) {
  return grammar.template.replace(/\{(\w+)\}/g, (_, slot) => selection[slot]);
}

// The slot values of a prompt written in the grammar's form, or null.
function parsePrompt(grammar, text) {
  const escape = (part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const slots = [];
  const pattern = grammar.template.split(/(\{\w+\})/).map((part) => {
    const slot = /^\{(\w+)\}$/.exec(part);
    if (!slot) return escape(part).replace(/ /g, "\\s+");
    slots.push(slot[1]);
    return `(${grammar.slots[slot[1]].map((value) => escape(value).replace(/ /g, "\\s+")).join("|")})`;
  }).join("");
  const match = new RegExp(`^\\s*${pattern}\\s*$`, "i").exec(text);
  if (!match) return null;
  return Object.fromEntries(slots.map((slot, index) => [slot, match[index + 1].toLowerCase().replace(/\s+/g, " ")]));
}

function markChips() {
  document.querySelectorAll("#grammar-slots .chip").forEach((chip) => {
    chip.setAttribute("aria-pressed", String(selection[chip.dataset.slot] === chip.dataset.value));
  });
}

function showGrammar(model) {
  const box = $("grammar-box");
  box.hidden = !model.vocabulary;
  if (!model.vocabulary) return;
  $("vocabulary-count").textContent = model.vocabulary.length;
  $("vocabulary").textContent = model.vocabulary.join(" ");
  const grammar = model.grammar;
  $("grammar-template").textContent = grammar ? grammar.template : "";
  $("grammar-slots").replaceChildren(...Object.entries(grammar ? grammar.slots : {}).map(([slot, values]) => {
    const row = document.createElement("div");
    row.className = "slot";
    const name = document.createElement("span");
    name.className = "slot-name";
    name.textContent = slot;
    const chips = document.createElement("div");
    chips.className = "chips";
    row.append(name, chips);
    chips.append(...values.map((value) => {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.dataset.slot = slot;
      chip.dataset.value = value;
      chip.textContent = value;
      chip.addEventListener("click", () => {
        selection[slot] = value;
        $("prompt").value = composePrompt(grammar);
        $("prompt").classList.remove("invalid");
        markChips();
        checkPrompt();
      });
      return chip;
    }));
    return row;
  }));
  if (grammar) {
    $("prompt").placeholder = grammar.example;
    selection = parsePrompt(grammar, $("prompt").value) ||
      Object.fromEntries(Object.entries(grammar.slots).map(([slot, values]) => [slot, values[0]]));
    markChips();
  }
  checkPrompt();
}

// While typing: the words the model does not know (the server refuses them with a 422).
function checkPrompt() {
  const hint = $("prompt-hint");
  const model = hyv.model;
  const unknown = model && model.vocabulary ? unknownWords($("prompt").value) : [];
  hint.textContent = unknown.length
    ? `Not in this model's vocabulary: ${unknown.map((word) => `'${word}'`).join(", ")}`
    : "";
  hint.hidden = !unknown.length;
  if (model && model.grammar) {
    const parsed = parsePrompt(model.grammar, $("prompt").value);
    if (parsed) {
      selection = parsed;
      markChips();
    }
  }
}

function postCreate() {
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  for (const name of ["size", "num_frames", "steps", "seed"]) {
    const value = $(name).value.trim();
    if (value) form.append(name, value);
  }
  const file = $("image").files[0];
  if (file) form.append("input_reference", file);
  return api("/v1/videos", { method: "POST", body: form });
}

async function submit(event) {
  event.preventDefault();
  showError("");
  $("submit").disabled = true;
  try {
    const response = deriving ? await postDerived(deriving) : await postCreate();
    const video = await response.json();
    if (deriving) stopDerive();
    watch(video);
    refreshRecent();
  } catch (error) {
    showError(error.message, error.param);
  } finally {
    $("submit").disabled = false;
  }
}

// --- remix and extend: a new video from a completed one -------------------------------------------

let deriving = null; // { operation: "remix" | "extend", video: the completed source }

// Where a derived video came from, its source's id shortened ("remix of video_1a2b3c…").
const ORIGIN = { remix: "remix of", edit: "edit of", extend: "extended from" };

function originText(video) {
  if (!video.operation || video.operation === "create") return "";
  const verb = ORIGIN[video.operation] || `${video.operation} of`;
  const source = video.source_video_id ? `${video.source_video_id.slice(0, 12)}\u2026` : "an upload";
  return `${verb} ${source}`;
}

// The lengths an extension can add: the model's frame counts (any 4n+1 up to its maximum where it
// lists none) but a single frame, each shown as the seconds it adds at the source's frame rate
// (the new segment's first frame takes the place of the source's last).
function extendLengths(model) {
  const counts = model.frame_counts ||
    Array.from({ length: Math.floor((model.max_frames - 1) / 4) + 1 }, (_, index) => 4 * index + 1);
  return counts.filter((frames) => frames > 1);
}

function fillExtendLengths(video) {
  const model = hyv.model;
  const select = $("extend-frames");
  if (!model) return select.replaceChildren();
  const fps = video.fps || model.defaults.fps;
  const lengths = extendLengths(model);
  select.replaceChildren(...lengths.map((frames) => new Option(`+${+((frames - 1) / fps).toFixed(2)} s`, String(frames))));
  const preferred = lengths.includes(model.defaults.num_frames) ? model.defaults.num_frames : lengths[0];
  if (preferred !== undefined) select.value = String(preferred);
}

// The form, set to remix or extend `video`: its prompt in the prompt box to edit, the create form's
// own fields put away (the new job takes them from its source).
function startDerive(operation, video) {
  deriving = { operation, video };
  showError("");
  $("derive-bar").hidden = false;
  $("derive-bar").dataset.operation = operation;
  $("derive-what").textContent = `${operation === "remix" ? "Remix of" : "Extend"} ${video.id}`;
  $("extend-length").hidden = operation !== "extend";
  if (operation === "extend") fillExtendLengths(video);
  $("create-fields").disabled = $("create-fields").hidden = true;
  $("submit").textContent = operation === "remix" ? "Remix" : "Extend";
  $("prompt").value = video.prompt || "";
  checkPrompt();
  $("create-form").scrollIntoView({ block: "nearest" });
  $("prompt").focus({ preventScroll: true });
}

function stopDerive() {
  deriving = null;
  $("derive-bar").hidden = true;
  $("derive-bar").dataset.operation = "";
  $("create-fields").disabled = $("create-fields").hidden = false;
  $("submit").textContent = "Generate";
  document.querySelectorAll(".invalid").forEach((element) => element.classList.remove("invalid"));
}

// JSON bodies: the source by id, as OpenAI's routes take it.
function postDerived({ operation, video }) {
  const prompt = $("prompt").value;
  const [path, body] = operation === "remix"
    ? [`/v1/videos/${encodeURIComponent(video.id)}/remix`, { prompt }]
    : ["/v1/videos/extensions", { prompt, num_frames: Number($("extend-frames").value), video: { id: video.id } }];
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// --- one job: progress and playback ---------------------------------------------------------------

function watch(video) {
  if (current) current.abort.abort();
  const abort = new AbortController();
  current = { id: video.id, video, abort, cancelling: false };
  Object.assign(hyv, { ...FRESH, videoId: video.id, events: [] });
  $("job").hidden = false;
  $("job-id").textContent = video.id;
  $("player").removeAttribute("src");
  $("cancel").disabled = false;
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
  if (video.status === "failed" && video.error) text += ` · ${video.error.message}`;
  if (!FINAL.includes(video.status) && current && current.id === video.id && current.cancelling) {
    text += " · cancelling";
  }
  status.textContent = text;
  if (current && current.id === video.id) current.video = video;
  $("job-origin").textContent = originText(video);
  $("cancel").hidden = FINAL.includes(video.status);
  for (const action of ["download", "remix", "extend"]) $(action).hidden = video.status !== "completed";
  $("player").hidden = video.status === "failed" || video.status === "cancelled";
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
    await streamEnded(id, signal, error); // a 409 if the job ended (cancelled, failed) before
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
    hyv.playback = "ended";
    player.play().catch(() => {});
  } catch (error) {
    const ended = await streamEnded(id, signal, error);
    if (source.readyState === "open" && !buffer.updating) source.endOfStream(ended ? undefined : "network");
  }
}

// The server cuts a rendering video's stream (no closing chunk) when its job ends without a video,
// which the browser reports as a network error: ask the job. True where it was cancelled or failed
// (its status is shown, no error); otherwise the stream's error is shown.
async function streamEnded(id, signal, error) {
  if (signal.aborted) return true;
  let video = null;
  try {
    video = await (await api(`/v1/videos/${id}`, { signal })).json();
  } catch (_) { /* the job is unknown too: report the stream's own error */ }
  if (signal.aborted) return true;
  if (video && (video.status === "cancelled" || video.status === "failed")) {
    hyv.playback = video.status;
    if (current && current.id === id) render(video);
    return true;
  }
  hyv.playback = "error";
  showError(error.status ? error.message : `video stream ended early: ${error.message}`);
  return false;
}

// Without MSE support: wait for the job, then play the finished file.
async function playWhenDone(id, signal) {
  hyv.mode = "file";
  try {
    for (;;) {
      if (signal.aborted) return;
      const video = await (await api(`/v1/videos/${id}`, { signal })).json();
      if (video.status === "completed") break;
      if (FINAL.includes(video.status)) {
        hyv.playback = video.status;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    const blob = await (await api(`/v1/videos/${id}/content`, { signal })).blob();
    hyv.playback = "ended";
    $("player").src = URL.createObjectURL(blob);
    $("player").play().catch(() => {});
  } catch (error) {
    if (!signal.aborted) showError(error.message);
  }
}

// The finished MP4, saved under the video's id.
async function download() {
  if (!current) return;
  const id = current.id;
  const button = $("download");
  button.disabled = true;
  try {
    const blob = await (await api(`/v1/videos/${id}/content`)).blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = `${id}.mp4`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000); // the browser reads it after the click returns
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

// --- recent videos ----------------------------------------------------------------------------------

// A completed video's first frame (a PNG), fetched once it scrolls near the viewport; a finished
// video's thumbnail never changes, so each is fetched once per page (id -> a promise of its object
// URL, null where it has none: expired).
const thumbnails = new Map();
const nearViewport = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => entries.forEach((entry) => {
    if (!entry.isIntersecting) return;
    nearViewport.unobserve(entry.target);
    showThumbnail(entry.target);
  }), { rootMargin: "200px" })
  : null;

function thumbnailUrl(id) {
  if (!thumbnails.has(id)) {
    thumbnails.set(id, api(`/v1/videos/${id}/content?variant=thumbnail`)
      .then((response) => response.blob())
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => null));
  }
  return thumbnails.get(id);
}

async function showThumbnail(image) {
  const url = await thumbnailUrl(image.dataset.id);
  if (url) image.src = url;
  else image.replaceWith(placeholder("expired"));
}

function placeholder(status) {
  const box = document.createElement("span");
  box.className = "thumb thumb-placeholder";
  box.dataset.status = status;
  box.setAttribute("aria-hidden", "true");
  return box;
}

function thumbnail(video) {
  if (video.status !== "completed") return placeholder(video.status);
  const image = document.createElement("img");
  image.className = "thumb";
  image.alt = ""; // the row's text says what it is; an empty box until it is fetched
  image.decoding = "async";
  image.dataset.id = video.id;
  if (nearViewport) nearViewport.observe(image);
  else showThumbnail(image);
  return image;
}

function forgetThumbnails(listed) {
  for (const [id, url] of thumbnails) {
    if (listed.has(id)) continue;
    thumbnails.delete(id);
    url.then((objectUrl) => objectUrl && URL.revokeObjectURL(objectUrl));
  }
}

// Remix and Extend on a completed row (a click elsewhere on the row shows the video).
function rowActions(video) {
  const box = document.createElement("span");
  box.className = "row-actions";
  if (video.status !== "completed") return box;
  box.append(...[["remix", "Remix"], ["extend", "Extend"]].map(([operation, label]) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.dataset.action = operation;
    button.textContent = label;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      startDerive(operation, video);
    });
    return button;
  }));
  return box;
}

async function refreshRecent() {
  try {
    const { data } = await (await api("/v1/videos?limit=10")).json();
    if (nearViewport) nearViewport.disconnect();
    forgetThumbnails(new Set(data.map((video) => video.id)));
    $("recent").replaceChildren(...data.map((video) => {
      const item = document.createElement("li");
      item.dataset.id = video.id;
      const cells = {
        when: new Date(video.created_at * 1000).toLocaleTimeString(),
        status: video.status,
        shape: `${video.size} · ${video.num_frames}f`,
        prompt: video.prompt || "",
      };
      item.replaceChildren(thumbnail(video), ...Object.entries(cells).map(([name, text]) => {
        const span = document.createElement("span");
        span.textContent = text;
        span.className = name === "status" ? `status status-${video.status}` : name;
        return span;
      }));
      const origin = originText(video);
      if (origin) {
        const mark = document.createElement("span");
        mark.className = "origin";
        mark.dataset.operation = video.operation;
        mark.title = video.source_video_id || "";
        mark.textContent = origin;
        item.querySelector(".prompt").prepend(mark);
      }
      item.append(rowActions(video));
      item.addEventListener("click", () => watch(video));
      return item;
    }));
  } catch (error) {
    if (error.status !== 401) showError(error.message);
  }
}

// --- wiring -------------------------------------------------------------------------------------------

$("create-form").addEventListener("submit", submit);
$("prompt").addEventListener("input", () => {
  $("prompt").classList.remove("invalid");
  checkPrompt();
});
$("refresh").addEventListener("click", refreshRecent);
$("download").addEventListener("click", download);
for (const operation of ["remix", "extend"]) {
  $(operation).addEventListener("click", () => current && startDerive(operation, current.video));
}
$("derive-back").addEventListener("click", () => {
  stopDerive();
  showError("");
});
// A running job stops within a step; its events then say "cancelled". The button stays disabled
// meanwhile: a second DELETE, once the job has ended, would delete it.
$("cancel").addEventListener("click", async () => {
  if (!current) return;
  const job = current;
  $("cancel").disabled = true;
  try {
    await api(`/v1/videos/${job.id}`, { method: "DELETE" });
    job.cancelling = true;
    if (current === job && !FINAL.includes($("status").dataset.status)) $("status").textContent += " · cancelling";
  } catch (error) {
    $("cancel").disabled = false;
    showError(error.message);
  }
});
$("api-key").value = apiKey();
$("api-key").addEventListener("change", () => {
  localStorage.setItem("hyv-api-key", $("api-key").value.trim());
  forgetThumbnails(new Set()); // fetched (or refused) with the previous key
  showError("");
  loadModel();
  refreshRecent();
});
loadModel();
refreshRecent();
