// Speech tab, Live mode: the text fed word by word (as an LLM writes) to
// WS /v1/audio/speech/stream; each sentence's audio plays as soon as it is generated, and
// "Barge in" stops the utterance (input.cancel) and its playback (docs/speech-stream.md).

import { liveProtocols } from "./api.js";
import { $, secs } from "./dom.js";
import { PcmPlayer } from "./pcm-player.js";

export const SPEECH_PATH = "/v1/audio/speech/stream";
const SAMPLE_RATE = 24000;

export class LiveSpeech {
  /** `config`: the session.config fields; `onUpdate(text)` while it runs; `onEnd(result)`
   * once: {wav, parts, timings} or {error}. Create it inside the click (audio may start). */
  constructor(text, wordsPerS, config, { onUpdate, onEnd }) {
    this.words = text.split(/(?<=\s)/);
    this.intervalMs = 1000 / wordsPerS;
    this.config = config;
    this.onUpdate = onUpdate;
    this.onEnd = onEnd;
    this.player = new PcmPlayer(SAMPLE_RATE);
    this.timer = null;
    this.socket = null;
    this.firstTextAt = null;
    this.ttfaMs = null;
    this.sentences = 0;
    this.ended = false;
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${SPEECH_PATH}`, liveProtocols());
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "session.config", response_format: "pcm", ...this.config }));
      this.firstTextAt = performance.now();
      this.feed(0);
    });
    socket.addEventListener("message", (m) => this.message(m.data));
    socket.addEventListener("close", (e) => {
      this.stopFeeding();
      if (!this.ended) this.finish({ error: `the socket closed (${e.code}): an API key is needed, or this origin is not allowed` });
    });
  }

  feed(i) {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    if (i >= this.words.length) {
      this.socket.send(JSON.stringify({ type: "input.done" }));
      return;
    }
    this.socket.send(JSON.stringify({ type: "input.text", text: this.words[i] }));
    this.timer = setTimeout(() => this.feed(i + 1), this.intervalMs);
  }

  stopFeeding() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  message(data) {
    if (data instanceof ArrayBuffer) {
      if (this.ttfaMs === null) this.ttfaMs = performance.now() - this.firstTextAt;
      this.player.push(new Uint8Array(data));
      return;
    }
    const event = JSON.parse(data);
    if (event.type === "audio.start") {
      this.onUpdate(`live… sentence ${event.sentence_index + 1}: “${event.sentence_text}” · ` +
        `first audio after ${Math.round(this.ttfaMs ?? 0)} ms`);
    } else if (event.type === "audio.done") {
      this.sentences += 1;
    } else if (event.type === "session.done" || event.type === "audio.cancelled") {
      this.finish({ event });
    } else if (event.type === "error") {
      this.finish({ error: event.message });
    }
  }

  /** Barge-in: the server stops generating; what is still queued to play is dropped. */
  bargeIn() {
    this.stopFeeding();
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "input.cancel" }));
    }
    this.player.sources.forEach((s) => s.stop());
  }

  finish({ event, error }) {
    this.ended = true;
    this.stopFeeding();
    if (this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "session.close" }));
    }
    if (error) return this.onEnd({ error });
    const cancelled = event.type === "audio.cancelled";
    const p = this.player;
    this.onEnd({
      wav: p.toWav(),
      parts: [
        `${secs(p.durationS)} of speech, ${this.sentences} sentences, live`,
        this.ttfaMs === null ? "no audio" : `time to first audio ${Math.round(this.ttfaMs)} ms`,
        p.underruns ? `${p.underruns} gaps (playback caught up with generation)` : "no gaps",
        cancelled ? `barged in after ${secs(event.sent_s)} sent` : null,
      ],
      timings: { ttfaMs: this.ttfaMs, totalMs: performance.now() - this.firstTextAt,
        sentences: this.sentences, underruns: p.underruns, cancelled: cancelled ? 1 : 0 },
    });
  }
}

/** The live session's config from the tab's fields. */
export function liveConfig(voice, seed, fields) {
  return { voice: voice || "alloy", ...(seed !== undefined ? { seed } : {}), ...fields };
}

export function setLivePressed(on) {
  $("speech-live").setAttribute("aria-pressed", on ? "true" : "false");
  $("speech-barge").disabled = !on;
}
