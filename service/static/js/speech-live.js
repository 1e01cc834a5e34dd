// Speech tab, Live mode: text sent over WS /v1/audio/speech/stream as it is written (a
// feeder: `pacedFeeder` word by word as an LLM writes, or speech-typed.js as the user
// types); each sentence's audio plays as soon as it is generated, and "Barge in" stops the
// utterance (input.cancel) and its playback (docs/speech-stream.md).

import { liveProtocols } from "./api.js";
import { $, secs } from "./dom.js";
import { PcmPlayer } from "./pcm-player.js";

export const SPEECH_PATH = "/v1/audio/speech/stream";
const SAMPLE_RATE = 24000;

export class LiveSpeech {
  /** `config`: the session.config fields; `feeder`: {begin(live), stop()}, begun once the
   * socket is open, it calls `sendText` and `sendDone`; `onUpdate(text)` while it runs;
   * `onEnd(result)` once: {wav, parts, timings} or {error}. Create it inside the click
   * (audio may start). */
  constructor(config, feeder, { onUpdate, onEnd }) {
    this.config = config;
    this.feeder = feeder;
    this.onUpdate = onUpdate;
    this.onEnd = onEnd;
    this.player = new PcmPlayer(SAMPLE_RATE);
    this.socket = null;
    this.firstTextAt = null;
    this.ttfaMs = null;
    this.sentences = 0;
    this.speaking = "live…";
    this.ended = false;
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${SPEECH_PATH}`, liveProtocols());
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "session.config", response_format: "pcm", ...this.config }));
      this.feeder.begin(this);
    });
    socket.addEventListener("message", (m) => this.message(m.data));
    socket.addEventListener("close", (e) => {
      if (!this.ended) this.finish({ error: `the socket closed (${e.code}): an API key is needed, or this origin is not allowed` });
    });
  }

  /** One fragment of the utterance's text (the time to first audio counts from the first). */
  sendText(text) {
    if (!text || this.socket.readyState !== WebSocket.OPEN) return;
    if (this.firstTextAt === null) this.firstTextAt = performance.now();
    this.socket.send(JSON.stringify({ type: "input.text", text }));
  }

  sendDone() {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type: "input.done" }));
  }

  message(data) {
    if (data instanceof ArrayBuffer) {
      if (this.ttfaMs === null) {
        this.ttfaMs = performance.now() - this.firstTextAt;
        this.update();
      }
      this.player.push(new Uint8Array(data));
      return;
    }
    const event = JSON.parse(data);
    if (event.type === "audio.start") {
      this.speaking = `live… sentence ${event.sentence_index + 1}: “${event.sentence_text}”`;
      this.update();
    } else if (event.type === "audio.done") {
      this.sentences += 1;
    } else if (event.type === "session.done" || event.type === "audio.cancelled") {
      this.finish({ event });
    } else if (event.type === "error") {
      this.finish({ error: event.message });
    }
  }

  /** The meta line: the sentence being spoken; the time to first audio once it is known
   * (the first sentence's audio.start comes before its audio). */
  update() {
    const ttfa = this.ttfaMs === null ? "" : ` · first audio after ${Math.round(this.ttfaMs)} ms`;
    this.onUpdate(this.speaking + ttfa);
  }

  /** Barge-in: the server stops generating; what is still queued to play is dropped. */
  bargeIn() {
    this.feeder.stop();
    if (this.firstTextAt === null) { // nothing sent: no utterance for the server to cancel
      this.finish({ event: { type: "audio.cancelled", sent_s: 0 } });
      return;
    }
    if (this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "input.cancel" }));
    }
    this.player.sources.forEach((s) => s.stop());
  }

  finish({ event, error }) {
    this.ended = true;
    this.feeder.stop();
    if (this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "session.close" }));
    } else {
      this.socket.close();
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
      timings: { ttfaMs: this.ttfaMs, totalMs: this.firstTextAt === null ? 0 : performance.now() - this.firstTextAt,
        sentences: this.sentences, underruns: p.underruns, cancelled: cancelled ? 1 : 0 },
    });
  }
}

/** A feeder that sends `text` word by word, `wordsPerS`, then input.done. */
export function pacedFeeder(text, wordsPerS) {
  const words = text.split(/(?<=\s)/);
  let timer = null;
  const feed = (live, i) => {
    if (i >= words.length) return live.sendDone();
    live.sendText(words[i]);
    timer = setTimeout(() => feed(live, i + 1), 1000 / wordsPerS);
  };
  return { begin: (live) => feed(live, 0), stop: () => clearTimeout(timer) };
}

/** The live session's config from the tab's fields. */
export function liveConfig(voice, seed, fields) {
  return { voice: voice || "alloy", ...(seed !== undefined ? { seed } : {}), ...fields };
}

export function setLivePressed(on, typed = false) {
  $("speech-live").setAttribute("aria-pressed", on ? "true" : "false");
  $("speech-barge").disabled = !on;
  $("speech-live-done").disabled = !(on && typed);
}
