// Classify tab: CLAP zero-shot classification, ranked bars and a labels-by-time heat map.

import { requestJson } from "./api.js";
import { AudioInput } from "./audio-input.js";
import { Chips } from "./chips.js";
import { LiveSession } from "./live.js";
import { $, busy, clearError, drawBars, el, pct, secs, showError } from "./dom.js";

// Our own starting points; any free text works as a label.
const PRESETS = {
  animals: ["a dog barking", "a cat meowing", "birds chirping", "a rooster crowing", "a cow mooing", "frogs croaking"],
  street: ["a car horn", "a police siren", "an engine idling", "footsteps on pavement", "a bicycle bell", "traffic noise"],
  home: ["a knock on a door", "glass breaking", "a vacuum cleaner", "running water", "a kettle whistling", "an alarm clock"],
  music: ["a piano", "an acoustic guitar", "drums", "a violin", "a choir singing", "electronic dance music"],
  voices: ["a man speaking", "a woman speaking", "a child laughing", "a crowd cheering", "someone coughing", "whispering"],
};

export function setupClassify() {
  const audio = new AudioInput(document.querySelector('[data-audio-input="classify"]'), "classify");
  const chips = new Chips($("classify-chips"), $("classify-label-entry"), $("classify-label-add"));
  chips.set(PRESETS.animals);
  document.querySelectorAll("#panel-classify [data-preset]").forEach((button) => {
    button.addEventListener("click", () => chips.set(PRESETS[button.dataset.preset]));
  });
  $("classify-chips-clear").addEventListener("click", () => chips.set([]));

  const form = $("classify-form");
  const error = $("classify-error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError(error);
    if (!audio.blob) return showError(error, "Choose an audio file or record one first.");
    if (chips.entry.value.trim()) chips.addFromEntry();
    if (!chips.values.length) return showError(error, "Add at least one label.");
    const body = audio.formData();
    chips.values.forEach((label) => body.append("labels", label));
    const template = $("classify-template").value.trim();
    if (template) body.append("prompt_template", template);
    const topK = $("classify-top-k").value.trim();
    if (topK) body.append("top_k", topK);
    body.append("per_window", "true");
    try {
      const result = await busy($("classify-run"), () =>
        requestJson("classify", { method: "POST", body }), "Classifying…");
      render(result);
    } catch (err) {
      showError(error, err);
    }
  });
  setupLive(chips, error);
}

// Live: the microphone streamed; the bars show the newest window, the heat map grows.
function setupLive(chips, error) {
  const button = $("classify-live");
  let session = null;
  const idle = () => {
    session = null;
    button.textContent = "● Live (microphone)";
    button.setAttribute("aria-pressed", "false");
  };
  button.addEventListener("click", async () => {
    if (session) return session.stop();
    clearError(error);
    if (chips.entry.value.trim()) chips.addFromEntry();
    if (!chips.values.length) return showError(error, "Add at least one label.");
    const labels = [...chips.values];
    const classify = { labels, hop_s: 1 };
    const template = $("classify-template").value.trim();
    if (template) classify.prompt_template = template;
    const windows = [];
    session = new LiveSession({ classify }, {
      onEvent: (event) => {
        if (event.type === "classify.window") {
          windows.push(event);
          renderLive(labels, windows);
        } else if (event.type === "skipped") {
          $("classify-meta").textContent += ` · window ${event.index} skipped (${event.reason})`;
        } else if (event.type === "error") {
          showError(error, `${event.code}: ${event.message}`);
        }
      },
      onEnd: (reason) => {
        if (typeof reason === "string") showError(error, `live stream ${reason}`);
        idle();
      },
    });
    button.textContent = "■ Stop live";
    button.setAttribute("aria-pressed", "true");
    try {
      await session.start();
    } catch (err) {
      showError(error, err.message || String(err));
      idle();
    }
  });
}

function renderLive(labels, windows) {
  const last = windows[windows.length - 1];
  $("classify-result").hidden = false;
  $("classify-meta").textContent = `live · ${windows.length} window${windows.length === 1 ? "" : "s"}` +
    ` · ${secs(last.end_s)} of audio`;
  drawBars($("classify-bars"), last.labels.map((s) => ({
    label: s.label, value: s.probability, note: `cos ${s.similarity.toFixed(3)}`,
  })));
  $("classify-heatmap-figure").hidden = false;
  drawHeatmap($("classify-heatmap"), labels, windows);
}

function render(result) {
  $("classify-result").hidden = false;
  const parts = [
    `${secs(result.duration_s)} of audio`,
    `${result.windows_used} of ${result.windows_total} window${result.windows_total === 1 ? "" : "s"} used`,
    result.windows_silent ? `${result.windows_silent} silent` : null,
    `template “${result.prompt_template}”`,
    `${Math.round(sum(result.timings_ms))} ms`,
  ];
  if (result.truncated) {
    parts.unshift(`cut to ${secs(result.duration_s)} of ${secs(result.original_duration_s)} (the server's limit)`);
  }
  $("classify-meta").textContent = parts.filter(Boolean).join(" · ");
  drawBars($("classify-bars"), result.labels.map((s) => ({
    label: s.label, value: s.probability, note: `cos ${s.similarity.toFixed(3)}`,
  })));
  const windows = result.per_window || [];
  $("classify-heatmap-figure").hidden = windows.length < 2;
  if (windows.length >= 2) drawHeatmap($("classify-heatmap"), result.labels.map((s) => s.label), windows);
}

function drawHeatmap(grid, labels, windows) {
  grid.style.gridTemplateColumns = `minmax(7rem, max-content) repeat(${windows.length}, minmax(3.2rem, 1fr))`;
  const byWindow = windows.map((w) => new Map(w.labels.map((s) => [s.label, s.probability])));
  const all = byWindow.flatMap((m) => [...m.values()]);
  // colour spans the map's own range, so that differences show even among many labels
  const low = Math.min(...all);
  const span = Math.max(1e-9, Math.max(...all) - low);
  $("classify-heatmap-scale").textContent = `lightest ${pct(low)}, darkest ${pct(low + span)}`;
  const header = el("div", { class: "hm-row", role: "row" },
    el("span", { class: "hm-corner", role: "columnheader", text: "label \\ window" }),
    ...windows.map((w) => el("span", { class: "hm-time", role: "columnheader",
      text: `${Math.round(w.start_s)}–${Math.round(w.end_s)} s` })));
  const rows = labels.map((label) => el("div", { class: "hm-row", role: "row" },
    el("span", { class: "hm-label", role: "rowheader", text: label, title: label }),
    ...windows.map((w, i) => {
      const p = byWindow[i].get(label);
      const where = `${label}, ${secs(w.start_s)}–${secs(w.end_s)}`;
      if (w.silent || p === undefined) {
        return el("span", { class: "hm-cell hm-silent", role: "cell", title: `${where}: silent, not scored` }, "silent");
      }
      const level = (p - low) / span;
      return el("span", {
        class: `hm-cell${level > 0.55 ? " hm-dark" : ""}`, role: "cell", title: `${where}: ${pct(p)}`,
        "data-p": p.toFixed(6), style: { "--p": level.toFixed(4) },
      }, pct(p));
    })));
  grid.replaceChildren(header, ...rows);
}

const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + (Number(b) || 0), 0);
