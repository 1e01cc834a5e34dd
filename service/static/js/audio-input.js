// An audio source for a form: a file, or a recording from the microphone (MediaRecorder;
// the service decodes the browser's WebM/Opus like any other upload).

import { el } from "./dom.js";

const ACCEPT = "audio/*,video/webm,.wav,.flac,.mp3,.ogg,.oga,.opus,.m4a,.aac,.webm";
const RECORDER_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"];

export class AudioInput {
  constructor(root, name, { onChange } = {}) {
    this.name = name;
    this.blob = null;
    this.filename = null;
    this.url = null;
    this.onChange = onChange || (() => {});
    this.recorder = null;

    this.file = el("input", { type: "file", id: `${name}-file`, accept: ACCEPT });
    this.recordButton = el("button", { type: "button", id: `${name}-record`, "aria-pressed": "false" }, "● Record");
    this.status = el("span", { class: "hint", id: `${name}-source`, role: "status" }, "no audio chosen yet");
    this.preview = el("audio", { controls: true, id: `${name}-preview`, preload: "metadata", hidden: true,
      "aria-label": "Play the chosen audio" });
    root.append(
      el("div", { class: "field" },
        el("label", { for: this.file.id }, "Audio file"),
        el("div", { class: "row wrap" }, this.file, el("span", { class: "hint" }, "or"), this.recordButton),
        this.status, this.preview),
    );
    this.file.addEventListener("change", () => {
      const file = this.file.files && this.file.files[0];
      if (file) this.set(file, file.name, `file: ${file.name} (${kib(file.size)})`);
    });
    this.recordButton.addEventListener("click", () => this.toggleRecording());
    // a file this browser cannot play may still be one the server decodes: say so, no dead player
    this.preview.addEventListener("error", () => {
      if (!this.blob) return;
      this.preview.hidden = true;
      this.status.textContent += " · this browser cannot play it";
    });
    if (!(navigator.mediaDevices && window.MediaRecorder)) {
      this.recordButton.disabled = true;
      this.recordButton.title = "recording needs a secure page (https or localhost) and MediaRecorder";
    }
  }

  set(blob, filename, description) {
    if (this.url) URL.revokeObjectURL(this.url);
    this.blob = blob;
    this.filename = filename;
    this.url = URL.createObjectURL(blob);
    this.preview.src = this.url;
    this.preview.hidden = false;
    this.status.textContent = description;
    this.onChange(this);
  }

  async toggleRecording() {
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      this.status.textContent = `microphone not available: ${err.message}`;
      return;
    }
    const mimeType = RECORDER_TYPES.find((t) => MediaRecorder.isTypeSupported(t));
    const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
    const parts = [];
    const started = performance.now();
    const tick = setInterval(() => {
      this.status.textContent = `recording… ${((performance.now() - started) / 1000).toFixed(1)} s`;
    }, 200);
    recorder.addEventListener("dataavailable", (e) => { if (e.data.size) parts.push(e.data); });
    recorder.addEventListener("stop", () => {
      clearInterval(tick);
      stream.getTracks().forEach((t) => t.stop());
      this.recorder = null;
      this.recordButton.textContent = "● Record";
      this.recordButton.setAttribute("aria-pressed", "false");
      const type = recorder.mimeType || "audio/webm";
      const blob = new Blob(parts, { type });
      const ext = type.includes("ogg") ? "ogg" : "webm";
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      this.set(blob, `recording.${ext}`, `recording: ${seconds} s, ${type} (${kib(blob.size)})`);
    });
    this.recorder = recorder;
    recorder.start(250);
    this.recordButton.textContent = "■ Stop recording";
    this.recordButton.setAttribute("aria-pressed", "true");
  }

  /** multipart form data holding the audio as `file`. */
  formData() {
    const form = new FormData();
    form.append("file", this.blob, this.filename || "audio");
    return form;
  }
}

function kib(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(0)} KiB` : `${(bytes / 1048576).toFixed(1)} MiB`;
}
