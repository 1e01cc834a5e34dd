// Speech tab, Live mode's "type live" feeder (speech-live.js sends and plays): each word is
// sent as soon as it is complete in the text box, so the server starts a sentence while the
// next is typed; Enter or "Done" sends the rest and input.done. What was sent can no longer
// change: the box only grows at its end (an edit that touches the sent part is undone).

import { $ } from "./dom.js";

const WORD_END = /[\s.,!?;:…。，、；：！？]/u;

export class TypedFeeder {
  constructor(box) {
    this.box = box;
    this.sent = "";
    this.last = "";
    this.live = null;
    this.onInput = () => this.input();
    this.onKey = (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.done();
      }
    };
  }

  /** The box's text so far counts as typed: its complete words go at once. */
  begin(live) {
    this.live = live;
    this.last = this.box.value;
    this.box.addEventListener("input", this.onInput);
    this.box.addEventListener("keydown", this.onKey);
    this.sendCompleteWords();
    this.box.focus();
    this.box.setSelectionRange(this.last.length, this.last.length);
  }

  input() {
    const box = this.box;
    if (!box.value.startsWith(this.sent)) { // the sent part is locked: undo the edit
      box.value = this.last;
      box.setSelectionRange(box.value.length, box.value.length);
      return;
    }
    this.last = box.value;
    this.sendCompleteWords();
  }

  sendCompleteWords() {
    const rest = this.last.slice(this.sent.length);
    let end = rest.length;
    while (end > 0 && !WORD_END.test(rest[end - 1])) end -= 1;
    if (end) this.send(rest.slice(0, end));
  }

  send(text) {
    this.live.sendText(text);
    this.sent += text;
    const tail = this.sent.trimEnd();
    const shown = tail.length > 80 ? `…${tail.slice(-80)}` : tail;
    const locked = $("speech-live-sent");
    locked.hidden = false;
    locked.textContent = `Sent, locked: “${shown}” — type on at the end; Enter or Done ends it.`;
  }

  /** Enter / "Done": the rest of the box, then input.done; the box is read-only until the
   * utterance ends. */
  done() {
    if (this.live === null || this.box.readOnly) return;
    this.send(this.box.value.slice(this.sent.length));
    this.live.sendDone();
    this.box.readOnly = true;
  }

  stop() {
    this.box.removeEventListener("input", this.onInput);
    this.box.removeEventListener("keydown", this.onKey);
    this.box.readOnly = false;
    $("speech-live-sent").hidden = true;
  }
}
