// Status tab: /v1/models (demo flag, precision, provider, batching), /readyz, and live queue
// depth and batch sizes read from the Prometheus text of /metrics.

import { noteDemo, request, requestJson } from "./api.js";
import { $, clearError, el, showError } from "./dom.js";

const POLL_MS = 2000;
let timer = null;
let lastCounts = new Map(); // queue -> batches counted at the previous poll

/** Prometheus text format -> [{name, labels, value}] (comments and blank lines skipped). */
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw.startsWith("#")) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const [, key, value] of (m[2] || "").matchAll(label)) labels[key] = value.replace(/\\(.)/g, "$1");
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function byQueue(samples, name, extra = () => true) {
  const out = new Map();
  for (const s of samples) {
    if (s.name === name && s.labels.queue !== undefined && extra(s)) out.set(s.labels.queue, s.value);
  }
  return out;
}

export function setupStatus() {
  $("status-refresh").addEventListener("click", () => refresh(true));
  $("status-live").addEventListener("change", () => schedule(true));
}

/** Called when the Status tab is shown or hidden. */
export function statusVisible(visible) {
  if (visible) refresh(true);
  schedule(visible);
}

function schedule(visible) {
  clearInterval(timer);
  timer = null;
  if (visible && $("status-live").checked) timer = setInterval(() => refresh(false), POLL_MS);
}

async function refresh(withModels) {
  const error = $("status-error");
  try {
    const jobs = [readiness(), queues()];
    if (withModels) jobs.push(models());
    await Promise.all(jobs);
    clearError(error);
  } catch (err) {
    showError(error, err);
    if (err.status === 401) schedule(false); // no key given: stop polling
  }
}

async function readiness() {
  // /readyz answers 503 (with its state) until every pack is loaded and warm
  const response = await fetch("readyz");
  const body = await response.json().catch(() => ({}));
  const pill = $("status-ready");
  pill.textContent = `${body.status || response.status}${body.models ? ` · ${body.models.join(", ")}` : ""}`;
  pill.className = `pill ${response.ok ? "good" : "bad"}`;
  if (body.error) pill.title = body.error;
}

async function models() {
  const body = await requestJson("v1/models");
  $("status-models").replaceChildren(...body.data.map((m) => {
    noteDemo(m.demo);
    const rows = [
      ["demo", m.demo ? "yes: random weights, outputs mean nothing" : "no"],
      ["source", m.source],
      ["precision", m.precision],
      ["provider", m.provider],
      ...batchingRows(m),
    ];
    return el("article", { class: `model${m.demo ? " demo" : ""}`, "data-kind": m.kind },
      el("h3", { text: m.kind }),
      el("dl", {}, rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])));
  }));
}

function batchingRows(m) {
  if (m.kind === "chattts") {
    return [["decoding", `${m.scheduling}, up to ${m.max_active} sequences per step`]];
  }
  const batchers = m.kind === "clap" ? Object.entries(m.batching || {}) : [["audio", m.batching]];
  return batchers.filter(([, b]) => b).map(([name, b]) => [
    `${name} batches`,
    `max ${b.max_batch_size}, cap in force ${b.size_limit ?? b.max_batch_size}` +
      `${b.adaptive ? " (measured)" : ""}, ${b.workers} worker${b.workers === 1 ? "" : "s"}`,
  ]);
}

async function queues() {
  const response = await request("metrics");
  const samples = parseMetrics(await response.text());
  const depth = byQueue(samples, "audioserve_queue_depth");
  const cap = byQueue(samples, "audioserve_batch_size_limit");
  const count = byQueue(samples, "audioserve_batch_size_count");
  const total = byQueue(samples, "audioserve_batch_size_sum");
  const names = [...new Set([...depth.keys(), ...cap.keys(), ...count.keys()])].sort();
  const tbody = $("status-queues").querySelector("tbody");
  tbody.replaceChildren(...names.map((q) => {
    const n = count.get(q) || 0;
    const recent = n - (lastCounts.get(q) ?? n);
    return el("tr", { "data-queue": q },
      el("th", { scope: "row", text: q }),
      el("td", { class: "num", text: fmt(depth.get(q)) }),
      el("td", { class: "num", text: cap.get(q) > 0 ? fmt(cap.get(q)) : "–" }),
      el("td", { class: "num", text: fmt(n) }),
      el("td", { class: "num", text: n ? (total.get(q) / n).toFixed(2) : "–" }),
      el("td", { class: "num", text: recent ? `+${recent}` : "–" }));
  }));
  if (!names.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: "no batcher has reported yet" })));
  lastCounts = count;
  const inFlight = samples.filter((s) => s.name === "audioserve_in_flight")
    .map((s) => `${s.labels.model} ${s.value}`);
  $("status-inflight").textContent = inFlight.length ? `in flight: ${inFlight.join(" · ")}` : "";
}

const fmt = (v) => (v === undefined ? "–" : Number.isInteger(v) ? String(v) : v.toFixed(2));
