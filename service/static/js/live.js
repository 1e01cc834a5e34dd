// Live mode: the microphone streamed to WS /v1/audio/analysis/stream as WebM/Opus (or Ogg)
// from MediaRecorder; the server's events arrive while it records (docs/live-analysis.md).

import { liveProtocols } from "./api.js";

const RECORDERS = [["audio/webm;codecs=opus", "webm"], ["audio/ogg;codecs=opus", "ogg"]];
export const LIVE_PATH = "/v1/audio/analysis/stream";

export class LiveSession {
  /** `config`: the session.config's classify / emotion parts; `onEvent(event)` for every
   * server event; `onEnd(reason)` once, when the socket closes. */
  constructor(config, { onEvent, onEnd }) {
    this.config = config;
    this.onEvent = onEvent;
    this.onEnd = onEnd;
    this.recorder = null;
    this.socket = null;
    this.created = false;
  }

  async start() {
    const found = RECORDERS.find(([type]) => window.MediaRecorder && MediaRecorder.isTypeSupported(type));
    if (!found) throw new Error("this browser cannot record WebM or Ogg Opus");
    const [mimeType, format] = found;
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${LIVE_PATH}`, liveProtocols());
    this.socket = socket;
    let chain = Promise.resolve();  // chunks in order, input.done after the last
    const send = (data) => { if (socket.readyState === WebSocket.OPEN) socket.send(data); };
    socket.addEventListener("open", () => {
      send(JSON.stringify({ type: "session.config", input: { format }, ...this.config }));
      const recorder = new MediaRecorder(stream, { mimeType });
      recorder.addEventListener("dataavailable", (e) => {
        if (e.data.size) chain = chain.then(async () => send(await e.data.arrayBuffer()));
      });
      recorder.addEventListener("stop", () => {
        stream.getTracks().forEach((t) => t.stop());
        chain = chain.then(() => send(JSON.stringify({ type: "input.done" })));
      });
      this.recorder = recorder;
      recorder.start(250);
    });
    socket.addEventListener("message", (m) => {
      const event = JSON.parse(m.data);
      if (event.type === "session.created") this.created = true;
      this.onEvent(event);
    });
    socket.addEventListener("close", (e) => {
      stream.getTracks().forEach((t) => t.stop());
      if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
      this.onEnd(this.created ? e.code : "refused (an API key is needed, or this origin is not allowed)");
    });
  }

  /** Stop recording; the server computes what is pending, then closes. */
  stop() {
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    else if (this.socket) this.socket.close();
  }
}
