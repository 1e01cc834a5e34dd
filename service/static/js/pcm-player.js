// Plays 16-bit little-endian mono PCM as it arrives (Web Audio), and keeps every sample so
// the whole stream can be saved as a WAV file when it ends. (Int16Array reads the platform's
// byte order: little endian wherever browsers run.)

const LEAD_S = 0.05; // scheduling margin: the first chunk starts this long after it arrives

export class PcmPlayer {
  /** Create it inside the click handler, so the browser lets the context start. */
  constructor(sampleRate) {
    this.sampleRate = sampleRate;
    this.context = new AudioContext({ sampleRate });
    this.nextTime = 0;
    this.carry = null; // an odd trailing byte of the previous chunk
    this.parts = [];
    this.samples = 0;
    this.chunks = 0;
    this.underruns = 0;
    this.firstStartMs = null; // performance.now() at which the first sample plays
    this.firstStartAt = null; // the same moment on the audio clock
    this.sources = new Set();
  }

  push(bytes) {
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    if (bytes.length % 2) {
      this.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (!bytes.length) return;
    const pcm = new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    this.parts.push(pcm);
    this.samples += pcm.length;
    this.chunks += 1;
    this.schedule(pcm);
  }

  schedule(pcm) {
    const ctx = this.context;
    const buffer = ctx.createBuffer(1, pcm.length, this.sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    const now = ctx.currentTime;
    if (this.nextTime < now) {
      if (this.firstStartMs !== null) this.underruns += 1;
      this.nextTime = now + LEAD_S;
    }
    if (this.firstStartMs === null) {
      this.firstStartMs = performance.now() + (this.nextTime - now) * 1000;
      this.firstStartAt = this.nextTime;
    }
    source.start(this.nextTime);
    this.nextTime += buffer.duration;
    this.sources.add(source);
    source.addEventListener("ended", () => this.sources.delete(source));
  }

  /** Seconds of audio the clock has played so far (0 before the first sample). */
  get playedS() {
    if (this.firstStartAt === null) return 0;
    return Math.max(0, this.context.currentTime - this.firstStartAt);
  }

  get durationS() {
    return this.samples / this.sampleRate;
  }

  stop() {
    this.sources.forEach((s) => s.stop());
    this.sources.clear();
    return this.context.close();
  }

  /** Every sample received, as a WAV file. */
  toWav() {
    const header = new DataView(new ArrayBuffer(44));
    const dataBytes = this.samples * 2;
    const text = (offset, s) => [...s].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF");
    header.setUint32(4, 36 + dataBytes, true);
    text(8, "WAVE");
    text(12, "fmt ");
    header.setUint32(16, 16, true);
    header.setUint16(20, 1, true); // PCM
    header.setUint16(22, 1, true); // mono
    header.setUint32(24, this.sampleRate, true);
    header.setUint32(28, this.sampleRate * 2, true);
    header.setUint16(32, 2, true);
    header.setUint16(34, 16, true);
    text(36, "data");
    header.setUint32(40, dataBytes, true);
    return new Blob([header, ...this.parts], { type: "audio/wav" });
  }
}
