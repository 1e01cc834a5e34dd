// Speech tab: ChatTTS through POST /tts, whole or streamed (raw PCM played through Web Audio
// as it arrives, with the time to first audio), voices from /v1/voices, saving a voice.

import { ApiError, postJson, request, requestJson } from "./api.js";
import { $, busy, clearError, el, secs, showError } from "./dom.js";
import { PcmPlayer } from "./pcm-player.js";
import { LiveSpeech, liveConfig, pacedFeeder, setLivePressed } from "./speech-live.js";
import { TypedFeeder } from "./speech-typed.js";

const SAMPLE_RATE = 24000;
const EXTENSIONS = { wav: "wav", mp3: "mp3", flac: "flac", opus: "opus", aac: "aac", pcm: "pcm" };

let abort = null;
let player = null;
let downloadUrl = null;
let live = null;

export function setupSpeech() {
  $("speech-form").addEventListener("submit", (e) => {
    e.preventDefault();
    speak();
  });
  $("speech-stop").addEventListener("click", () => stop());
  $("speech-stream").addEventListener("change", () => {
    $("speech-format").disabled = $("speech-stream").checked;
  });
  $("speech-voice").addEventListener("change", () => {
    $("speech-seed").disabled = Boolean($("speech-voice").value);
  });
  $("speech-save").addEventListener("click", saveVoice);
  $("speech-live").addEventListener("click", toggleLive);
  $("speech-barge").addEventListener("click", () => live && live.bargeIn());
  $("speech-live-done").addEventListener("click", () => live?.feeder.done?.());
}

/** Live mode: the text fed word by word over the speech WebSocket (speech-live.js), at a
 * pace or as it is typed (speech-typed.js). */
function toggleLive() {
  if (live) {
    live.bargeIn();
    return;
  }
  const error = $("speech-error");
  clearError(error);
  stop();
  const meta = $("speech-meta");
  Object.keys(meta.dataset).forEach((name) => delete meta.dataset[name]);
  $("speech-result").hidden = false;
  const picked = $("speech-mix").value.trim() || $("speech-voice").value;
  const seedField = $("speech-seed");
  const seed = seedField.disabled ? undefined : numberField("speech-seed");
  const speed = numberField("speech-speed");
  const config = liveConfig(picked, seed, {
    temperature: numberField("speech-temperature"), top_p: numberField("speech-top-p"),
    top_k: numberField("speech-top-k"), ...(speed !== undefined ? { speed } : {}),
  });
  const typed = $("speech-live-typed").checked;
  const feeder = typed ? new TypedFeeder($("speech-text"))
    : pacedFeeder($("speech-text").value, numberField("speech-live-wps") || 20);
  live = new LiveSpeech(config, feeder, {
    onUpdate: (text) => { meta.textContent = text; },
    onEnd: (result) => {
      live = null;
      setLivePressed(false);
      if (result.error) showError(error, result.error);
      else show(result.wav, "wav", result.parts, result.timings);
    },
  });
  setLivePressed(true, typed);
  meta.textContent = typed ? "live: type; each word is sent when it is complete" : "";
  live.start();
}

/** Fill the voice picker from /v1/voices (built-in seeds, saved voices, saved mixes). */
export async function loadVoices(selected) {
  const select = $("speech-voice");
  try {
    const body = await requestJson("v1/voices");
    const keep = selected ?? select.value;
    select.replaceChildren(el("option", { value: "" }, "(speaker from the seed)"),
      ...body.data.map((v) => el("option", { value: v.name }, `${v.name}${describeVoice(v)}`)));
    select.value = body.data.some((v) => v.name === keep) ? keep : "";
    $("speech-seed").disabled = Boolean(select.value);
  } catch (err) {
    if (err.status !== 503) showError($("speech-error"), err); // 503: no TTS pack loaded
  }
}

function describeVoice(v) {
  if (v.mix) return ` (mix ${v.mix})`;
  if (v.seed !== null && v.seed !== undefined) return v.builtin ? ` (seed ${v.seed})` : ` (saved, seed ${v.seed})`;
  return v.builtin ? "" : " (saved)";
}

function numberField(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

function speechBody() {
  const stream = $("speech-stream").checked;
  const body = {
    text: $("speech-text").value,
    format: stream ? "pcm" : $("speech-format").value,
    sample_rate: SAMPLE_RATE,
    stream,
    temperature: numberField("speech-temperature"),
    top_p: numberField("speech-top-p"),
    top_k: numberField("speech-top-k"),
  };
  const speed = numberField("speech-speed");
  if (speed !== undefined && speed !== 1) body.speed = speed;
  const voice = currentVoice();
  if (voice.mix) body.voice = voice.mix;
  else if (voice.seed !== undefined) body.seed = voice.seed;
  return body;
}

/** What "this voice" is: a typed mix, else the picked voice, else the seed (or nothing). */
function currentVoice() {
  const mix = $("speech-mix").value.trim() || $("speech-voice").value;
  if (mix) return { mix };
  return { seed: numberField("speech-seed") };
}

async function speak() {
  const error = $("speech-error");
  clearError(error);
  stop();
  const body = speechBody();
  const meta = $("speech-meta");
  Object.keys(meta.dataset).forEach((name) => delete meta.dataset[name]);
  meta.textContent = "";
  abort = new AbortController();
  // the AudioContext is made inside the click, so the browser lets it play
  player = body.stream ? new PcmPlayer(SAMPLE_RATE) : null;
  $("speech-stop").disabled = false;
  try {
    await busy($("speech-run"), () => (body.stream ? streamSpeech(body, player) : wholeSpeech(body)), "Speaking…");
  } catch (err) {
    if (err.name === "AbortError") {
      $("speech-meta").textContent = "stopped";
    } else {
      showError(error, err);
    }
  } finally {
    $("speech-stop").disabled = true;
    abort = null;
  }
}

function stop() {
  if (abort) abort.abort();
  if (player) player.stop().catch(() => {});
  player = null;
}

function requestOptions(body) {
  return {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: abort.signal,
  };
}

async function wholeSpeech(body) {
  const started = performance.now();
  const response = await request("tts", requestOptions(body));
  const blob = await response.blob();
  const elapsed = performance.now() - started;
  const h = response.headers;
  show(blob, body.format, [
    `${secs(Number(h.get("x-audioserve-duration-s")))} of speech`,
    `${h.get("x-audioserve-tokens")} tokens (${h.get("x-audioserve-finish-reason")})`,
    `sampling seed ${h.get("x-audioserve-sampling-seed")}`,
    `${Math.round(elapsed)} ms in all`,
  ], { totalMs: elapsed });
  $("speech-audio").play().catch(() => {}); // autoplay may be refused: the controls remain
}

async function streamSpeech(body, pcm) {
  const started = performance.now();
  const response = await request("tts", requestOptions(body));
  const rate = Number(response.headers.get("x-audioserve-sample-rate") || SAMPLE_RATE);
  if (rate !== SAMPLE_RATE) throw new ApiError(0, "stream", `unexpected sample rate ${rate}`);
  const meta = $("speech-meta");
  $("speech-result").hidden = false;
  const reader = response.body.getReader();
  let firstChunkMs = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (firstChunkMs === null) firstChunkMs = performance.now() - started;
    pcm.push(value);
    meta.textContent = `streaming… first audio after ${Math.round(firstChunkMs)} ms · ` +
      `${secs(pcm.durationS)} received in ${pcm.chunks} chunks`;
  }
  const doneMs = performance.now() - started;
  const playedAtEndMs = pcm.playedS * 1000; // > 0: playback had begun before the stream ended
  const firstPlayMs = pcm.firstStartMs === null ? null : pcm.firstStartMs - started;
  show(pcm.toWav(), "wav", [
    `${secs(pcm.durationS)} of speech, streamed in ${pcm.chunks} chunks`,
    firstChunkMs === null ? "no audio" : `time to first audio ${Math.round(firstChunkMs)} ms`,
    `whole stream ${Math.round(doneMs)} ms (${secs(pcm.playedS)} already played by then)`,
    pcm.underruns ? `${pcm.underruns} gaps (playback caught up with generation)` : null,
    `sampling seed ${response.headers.get("x-audioserve-sampling-seed")}`,
  ], { ttfaMs: firstChunkMs, firstPlayMs, totalMs: doneMs, playedAtEndMs, chunks: pcm.chunks });
}

function show(blob, format, parts, timings) {
  $("speech-result").hidden = false;
  const meta = $("speech-meta");
  meta.textContent = parts.filter(Boolean).join(" · ");
  for (const [name, value] of Object.entries(timings)) {
    if (value !== null && value !== undefined) meta.dataset[name] = String(Math.round(value));
  }
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(blob);
  $("speech-audio").src = downloadUrl;
  const link = $("speech-download");
  link.href = downloadUrl;
  link.download = `speech.${EXTENSIONS[format] || "bin"}`;
  link.textContent = `Download ${link.download}`;
}

async function saveVoice() {
  const status = $("speech-save-status");
  const error = $("speech-error");
  status.textContent = "";
  clearError(error);
  const name = $("speech-save-name").value.trim();
  const voice = currentVoice();
  if (!name) return showError(error, "Give the voice a name (letters, digits, _ or -).");
  if (!voice.mix && voice.seed === undefined) {
    return showError(error, "Pick a voice, type a mix or set a speaker seed first: a random speaker cannot be saved.");
  }
  try {
    const saved = await busy($("speech-save"), () => postJson("v1/voices", { name, ...voice }), "Saving…");
    status.textContent = `saved voice “${saved.name}”`;
    $("speech-mix").value = "";
    await loadVoices(saved.name);
  } catch (err) {
    showError(error, err);
  }
}
