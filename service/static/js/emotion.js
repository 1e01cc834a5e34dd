// Emotion tab: Emotion2Vec+ per utterance, or per frame with a timeline of frame
// probabilities, the merged segments as coloured bands, and a cursor that follows playback.

import { requestJson } from "./api.js";
import { AudioInput } from "./audio-input.js";
import { $, busy, clearError, drawBars, el, pct, secs, showError } from "./dom.js";
import { LiveSession } from "./live.js";

const COLORS = {
  angry: "#dc2626", disgusted: "#65a30d", fearful: "#7c3aed", happy: "#f59e0b",
  neutral: "#64748b", other: "#a16207", sad: "#2563eb", surprised: "#db2777", unknown: "#94a3b8",
};
const FALLBACK = ["#0891b2", "#be123c", "#4d7c0f", "#9333ea", "#c2410c"];

export function colorOf(label, index = 0) {
  return COLORS[label] || FALLBACK[index % FALLBACK.length];
}

let shown = null; // {result, duration} of the timeline on screen, for redraws

export function setupEmotion() {
  const audio = new AudioInput(document.querySelector('[data-audio-input="emotion"]'), "emotion");
  const form = $("emotion-form");
  const error = $("emotion-error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearError(error);
    if (!audio.blob) return showError(error, "Choose an audio file or record one first.");
    const body = audio.formData();
    body.append("granularity", $("emotion-granularity").value);
    body.append("trim_silence", $("emotion-trim").checked ? "true" : "false");
    try {
      const result = await busy($("emotion-run"), () =>
        requestJson("emotion", { method: "POST", body }), "Analysing…");
      render(result, audio);
    } catch (err) {
      showError(error, err);
    }
  });
  const player = $("emotion-audio");
  const follow = () => {
    moveCursor(player);
    if (!player.paused) requestAnimationFrame(follow);
  };
  player.addEventListener("play", () => requestAnimationFrame(follow));
  ["timeupdate", "seeked", "loadedmetadata"].forEach((name) => player.addEventListener(name, () => moveCursor(player)));
  $("emotion-timeline").addEventListener("click", (e) => {
    if (!shown) return;
    const box = e.currentTarget.getBoundingClientRect();
    const at = (e.clientX - box.left - AXIS_PX) / (box.width - AXIS_PX);
    player.currentTime = Math.max(0, Math.min(1, at)) * shown.duration;
    moveCursor(player);
  });
  window.addEventListener("resize", () => { if (shown) drawTimeline(shown.result.frames, shown.duration); });
  setupLive(error);
}

// Live: the microphone streamed; each utterance's frames join the timeline as it ends,
// and while it goes on its partial (emotion.partial, every second) is drawn dimmed in its
// place until the final replaces it.
const PARTIAL_EVERY_S = 1;

function setupLive(error) {
  const button = $("emotion-live");
  let session = null;
  const idle = () => {
    session = null;
    button.textContent = "● Live (microphone)";
    button.setAttribute("aria-pressed", "false");
  };
  button.addEventListener("click", async () => {
    if (session) return session.stop();
    clearError(error);
    const frames = { labels: [], frame_rate: 50, times_s: [], scores: [], segments: [] };
    let utterances = 0;
    let last = null;  // the last final (a skipped utterance's partial gives way to it)
    const meta = $("emotion-meta");
    meta.dataset.partials = "0";  // partials shown (the test compares session.done's count)
    delete meta.dataset.partialsSent;
    session = new LiveSession({ emotion: { granularity: "frame", partial_every_s: PARTIAL_EVERY_S } }, {
      onEvent: (event) => {
        if (event.type === "emotion.partial") {
          meta.dataset.partials = String(Number(meta.dataset.partials) + 1);
          renderLive(event, frames, utterances);
        } else if (event.type === "emotion.utterance") {
          utterances += 1;
          const f = event.frames;
          Object.assign(frames, { labels: f.labels, frame_rate: f.frame_rate });
          frames.times_s.push(...f.times_s);
          frames.scores.push(...f.scores);
          frames.segments.push(...f.segments);
          last = event;
          renderLive(event, frames, utterances);
        } else if (event.type === "skipped" && event.task === "emotion" && last) {
          renderLive(last, frames, utterances);
        } else if (event.type === "session.done") {
          meta.dataset.partialsSent = String(event.partials);
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

// `event`: the last final, or a partial (interim: dimmed, its frames drawn after the
// finals' until its final replaces it).
function renderLive(event, frames, utterances) {
  $("emotion-result").hidden = false;
  const interim = event.final === false;
  const top = event.emotion;
  $("emotion-top").replaceChildren(
    el("span", { class: "emoji", text: top.emoji, "aria-hidden": "true" }),
    el("span", { class: "top-label", text: top.label }),
    el("span", { class: "top-score", text: pct(top.score) }),
    ...(interim ? [el("span", { class: "top-score", text: "so far" })] : []),
  );
  $("emotion-top").classList.toggle("interim", interim);
  $("emotion-bars").classList.toggle("interim", interim);
  $("emotion-meta").textContent = `live · ${utterances} utterance${utterances === 1 ? "" : "s"}` +
    (interim ? ` · speaking ${secs(event.start_s)}–${secs(event.end_s)} (so far)`
      : ` · the last ${secs(event.start_s)}–${secs(event.end_s)}`);
  drawBars($("emotion-bars"), event.scores.map((s) => ({ label: s.label, value: s.score, emoji: s.emoji })),
    { color: colorOf });
  $("emotion-timeline-figure").hidden = false;
  shown = null;  // no recording to play back: no cursor
  const partial = interim ? event.frames : null;
  drawTimeline(frames, event.end_s, partial);
  drawSegments(frames.segments, event.end_s, partial ? partial.segments : []);
  $("emotion-legend").replaceChildren(...frames.labels.map((label, i) => el("li", {},
    el("span", { class: "swatch", style: { background: colorOf(label, i) } }), label)));
}

function render(result, audio) {
  $("emotion-result").hidden = false;
  $("emotion-top").classList.remove("interim");
  $("emotion-bars").classList.remove("interim");
  const top = result.emotion;
  $("emotion-top").replaceChildren(
    el("span", { class: "emoji", text: top.emoji, "aria-hidden": "true" }),
    el("span", { class: "top-label", text: top.label }),
    el("span", { class: "top-score", text: pct(top.score) }),
  );
  const analysed = result.analysed;
  $("emotion-meta").textContent = [
    `${secs(result.duration_s)} of audio`,
    analysed.trimmed ? `analysed ${secs(analysed.start_s)}–${secs(analysed.end_s)} (silence trimmed)` : null,
    result.chunks > 1 ? `${result.chunks} chunks merged` : null,
    `${result.granularity} level`,
  ].filter(Boolean).join(" · ");
  drawBars($("emotion-bars"), result.scores.map((s) => ({ label: s.label, value: s.score, emoji: s.emoji })),
    { color: colorOf });
  const figure = $("emotion-timeline-figure");
  figure.hidden = !result.frames;
  shown = null;
  if (!result.frames) return;
  shown = { result, duration: result.duration_s };
  const player = $("emotion-audio");
  player.src = audio.url;
  drawTimeline(result.frames, result.duration_s);
  drawSegments(result.frames.segments, result.duration_s);
  $("emotion-legend").replaceChildren(...result.frames.labels.map((label, i) => el("li", {},
    el("span", { class: "swatch", style: { background: colorOf(label, i) } }), label)));
  moveCursor(player);
}

const AXIS_PX = 34; // left margin for the probability axis

function drawTimeline(frames, duration, partial = null) {
  const canvas = $("emotion-canvas");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 180;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  // the axis tops out at the largest probability, rounded up to a round step
  const peak = Math.max(0.05, ...frames.scores.flat(), ...(partial ? partial.scores.flat() : []));
  const step = peak <= 0.25 ? 0.05 : peak <= 0.5 ? 0.1 : 0.25;
  const top = Math.min(1, Math.ceil(peak / step - 1e-9) * step);
  const y = (p) => height - 4 - (p / top) * (height - 14);
  const plot = width - AXIS_PX;
  const x = (t) => AXIS_PX + (t / duration) * plot;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const ticks = Math.round(top / step);
  for (let i = 0; i <= ticks; i++) {
    const level = i * step;
    ctx.strokeStyle = i === 0 ? "#94a3b8" : "#e2e8f0";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(AXIS_PX, y(level));
    ctx.lineTo(width, y(level));
    ctx.stroke();
    ctx.fillStyle = "#475569";
    if (i > 0) ctx.fillText(`${Math.round(level * 100)}%`, AXIS_PX - 4, y(level));
  }
  const plotFrames = (shownFrames, alpha) => {
    const frame = 1 / shownFrames.frame_rate;
    ctx.globalAlpha = alpha;
    shownFrames.labels.forEach((label, c) => {
      ctx.strokeStyle = colorOf(label, c);
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      shownFrames.scores.forEach((row, f) => {
        const px = x(shownFrames.times_s[f] + frame / 2);
        if (f === 0) ctx.moveTo(px, y(row[c]));
        else ctx.lineTo(px, y(row[c]));
      });
      ctx.stroke();
    });
    ctx.globalAlpha = 1;
  };
  plotFrames(frames, 1);
  if (partial) plotFrames(partial, 0.4);  // interim: the final replaces it
  canvas.setAttribute("aria-label",
    `Emotion probabilities for ${frames.scores.length} frames over ${secs(duration)}`);
}

function drawSegments(segments, duration, interim = []) {
  const band = $("emotion-segments");
  band.style.marginLeft = `${AXIS_PX}px`;
  const all = [...segments, ...interim.map((s) => ({ ...s, interim: true }))];
  band.replaceChildren(...all.map((s) => {
    const width = ((s.end_s - s.start_s) / duration) * 100;
    return el("span", {
      class: s.interim ? "segment interim" : "segment", "data-label": s.label,
      title: `${s.label} ${s.emoji}: ${secs(s.start_s)}–${secs(s.end_s)} (${pct(s.score)})`,
      style: { left: `${(s.start_s / duration) * 100}%`, width: `${width}%`, background: colorOf(s.label) },
    }, width > 6 ? `${s.emoji} ${s.label}` : s.emoji);
  }));
}

function moveCursor(player) {
  if (!shown) return;
  const at = Math.min(1, (player.currentTime || 0) / shown.duration);
  const cursor = $("emotion-cursor");
  cursor.style.left = `calc(${AXIS_PX}px + ${at} * (100% - ${AXIS_PX}px))`;
  cursor.dataset.time = (player.currentTime || 0).toFixed(3);
}
