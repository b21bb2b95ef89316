// The superres page: one job per picked image, polled until it finishes, then before/after.
// Talks only to this origin's /v1 API; results are shown from their presigned URLs.

const KEY_STORAGE = "superres.apiKey";
const POLL_MS = [400, 700, 1000, 1500, 2000];
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

const MESSAGES = {
  too_large: "This image is too large for the service (file size or pixel count). Try a smaller image or a lower scale.",
  unsupported_media_type: "This file isn't an image the service can read. Send PNG, JPEG or WebP.",
  animated_image: "Animated images can't be upscaled. Send a still image.",
  corrupt_image: "This image is damaged or truncated and can't be decoded.",
  invalid_image: "This image can't be decoded.",
  empty_input: "The file is empty.",
  missing_file: "No image was sent.",
  malformed_multipart: "The upload was malformed. Try again.",
  unknown_model: "The chosen model doesn't exist on this service.",
  invalid_option: "One of the options isn't valid for this image or model.",
  validation_error: "One of the options is invalid.",
  unauthorized: "The service needs a valid API key. Enter it above.",
  quota_exceeded: "Your API key is over its quota.",
  overloaded: "The service is busy.",
  model_unavailable: "The model isn't available right now.",
  storage_unavailable: "Result storage is unavailable right now.",
  jobs_disabled: "This service doesn't run jobs.",
  request_timeout: "The upload took too long.",
  not_found: "The job no longer exists.",
  network: "The service can't be reached.",
  internal: "The service failed unexpectedly.",
};
const RETRYABLE = new Set(["overloaded", "quota_exceeded", "model_unavailable", "storage_unavailable", "network", "request_timeout"]);

const $ = (sel, root = document) => root.querySelector(sel);

class ApiFailure extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    Object.assign(this, { status, code, retryAfter });
  }
}

/** A readable sentence for an API error ({code, message}, plus Retry-After when there was one). */
export function describeError(code, message, retryAfter) {
  let text = MESSAGES[code] || "The request failed.";
  if (message && message !== text) text += ` (${message})`;
  if (retryAfter) text += ` Try again in ${retryAfter} s.`;
  else if (RETRYABLE.has(code)) text += " Try again later.";
  return text;
}

function apiKey() {
  return $("#api-key").value.trim();
}

async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch {
    throw new ApiFailure(0, "network", "");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const err = (body && body.error) || {};
    const code = err.code || (response.status === 401 ? "unauthorized" : "internal");
    throw new ApiFailure(response.status, code, err.message || "", response.headers.get("Retry-After"));
  }
  return body;
}

function notice(text, isError = false) {
  const el = $("#notice");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function loadModels() {
  const select = $("#model");
  try {
    const models = await api("/v1/models");
    select.replaceChildren();
    const upscalers = models.filter((m) => m.kind === "upscale");
    for (const m of upscalers) {
      const option = new Option(`${m.name}${m.scale ? ` (×${m.scale})` : ""}${m.ready ? "" : ` — ${m.status}`}`, m.name);
      option.disabled = m.status === "unavailable";
      select.add(option);
    }
    const ready = upscalers.find((m) => m.ready); // a loaded model answers first
    if (ready) select.value = ready.name;
    const faces = models.filter((m) => m.kind === "face-restore");
    const face = $("#face");
    face.disabled = !faces.some((m) => m.status !== "unavailable");
    face.title = face.disabled ? "face restoration is not available on this service" : "";
    notice(upscalers.length ? "" : "The service lists no upscaling models.", !upscalers.length);
  } catch (e) {
    select.replaceChildren(new Option("default model", ""));
    notice(`Models could not be listed: ${describeError(e.code, e.message, e.retryAfter)}`, true);
  }
}

function options() {
  const opts = {};
  const model = $("#model").value;
  const scale = $("#scale").value;
  if (model) opts.model = model;
  if (scale) opts.scale = Number(scale);
  if ($("#face").checked && !$("#face").disabled) opts.face_enhance = true;
  return opts;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class JobView {
  constructor(file) {
    this.file = file;
    this.options = options();
    this.el = $("#job-template").content.firstElementChild.cloneNode(true);
    this.originalUrl = URL.createObjectURL(file);
    $(".job-name", this.el).textContent = file.name || "image";
    $(".retry", this.el).addEventListener("click", () => this.run());
    this.wireResult();
    $("#jobs").prepend(this.el);
  }

  status(text, state, isError = false) {
    this.el.dataset.status = state;
    const el = $(".job-status", this.el);
    el.textContent = text;
    el.classList.toggle("error", isError);
  }

  fail(e) {
    this.el.dataset.code = e.code;
    this.status(describeError(e.code, e.message, e.retryAfter), "error", true);
    $(".job-actions", this.el).hidden = !RETRYABLE.has(e.code);
    $("progress", this.el).hidden = true;
  }

  async run() {
    $(".job-actions", this.el).hidden = true;
    $("progress", this.el).hidden = false;
    $("progress", this.el).removeAttribute("value"); // indeterminate while uploading
    this.status("Uploading…", "uploading");
    const form = new FormData();
    form.append("file", this.file, this.file.name || "image");
    form.append("options", JSON.stringify(this.options));
    try {
      const job = await api("/v1/jobs", { method: "POST", body: form });
      this.el.dataset.jobId = job.id;
      await this.poll(job);
    } catch (e) {
      this.fail(e);
    }
  }

  async poll(job) {
    for (let i = 0; !FINISHED.has(job.status); i++) {
      this.progress(job);
      await sleep(POLL_MS[Math.min(i, POLL_MS.length - 1)]);
      job = await api(`/v1/jobs/${encodeURIComponent(job.id)}`);
    }
    if (job.status === "succeeded") this.show(job);
    else if (job.status === "cancelled") this.status("Cancelled.", "cancelled", true);
    else this.fail(new ApiFailure(0, (job.error && job.error.code) || "internal", (job.error && job.error.message) || ""));
  }

  progress(job) {
    const bar = $("progress", this.el);
    const p = job.progress;
    if (p && p.total) {
      bar.max = p.total;
      bar.value = p.done;
      this.status(`Upscaling: ${p.done} of ${p.total} tiles`, job.status);
    } else {
      bar.removeAttribute("value");
      this.status(job.status === "queued" ? "Queued…" : "Working…", job.status);
    }
  }

  wireResult() {
    const slider = $(".slider", this.el);
    const frame = $(".frame", this.el);
    const split = () => {
      frame.style.setProperty("--split", `${slider.value}%`);
      slider.setAttribute("aria-valuetext", `${slider.value}% before, ${100 - slider.value}% after`);
    };
    slider.addEventListener("input", split);
    split();
    $(".zoom", this.el).addEventListener("change", (e) => frame.style.setProperty("--zoom", e.target.value));
    $(".copy", this.el).addEventListener("click", () => this.copy());
  }

  show(job) {
    const r = job.result;
    $(".before", this.el).src = this.originalUrl;
    $(".after", this.el).src = r.url;
    const link = $(".download", this.el);
    link.href = r.url;
    link.setAttribute("download", (r.key || "").split("/").pop() || "result");
    $(".meta", this.el).textContent = `${r.width}×${r.height} ${r.format}, ${r.model}${job.cache_hit ? ", cached" : ""}`;
    $(".result", this.el).hidden = false;
    const expires = r.expires_at ? ` The link works until ${new Date(r.expires_at).toLocaleString()}.` : "";
    this.status(`Done.${expires}`, "succeeded");
  }

  async copy() {
    const url = $(".download", this.el).href;
    try {
      await navigator.clipboard.writeText(url);
      this.status("Link copied.", "succeeded");
    } catch {
      window.prompt("Copy this link:", url);
    }
  }
}

function submit(files) {
  const images = [...files];
  if (!images.length) return;
  notice(`${images.length} image${images.length > 1 ? "s" : ""} submitted.`);
  for (const file of images) new JobView(file).run();
}

function wireDrop() {
  const drop = $("#drop");
  const input = $("#files");
  input.addEventListener("change", () => {
    submit(input.files);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    submit(e.dataTransfer.files);
  });
}

function wireKey() {
  const input = $("#api-key");
  input.value = localStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("change", () => {
    const key = apiKey();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
}

$("#settings").addEventListener("submit", (e) => e.preventDefault());
wireKey();
wireDrop();
loadModels();
