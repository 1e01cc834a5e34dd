// Editable label chips: Enter (or Add) adds, commas split, each chip has a remove button,
// Backspace in an empty entry removes the last chip.

import { el } from "./dom.js";

export class Chips {
  constructor(list, entry, addButton, { max = 256 } = {}) {
    this.list = list;
    this.entry = entry;
    this.max = max;
    this.values = [];
    entry.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        this.addFromEntry();
      } else if (e.key === "Backspace" && !entry.value && this.values.length) {
        this.remove(this.values.length - 1);
      }
    });
    addButton.addEventListener("click", () => this.addFromEntry());
  }

  addFromEntry() {
    this.add(this.entry.value.split(","));
    this.entry.value = "";
    this.entry.focus();
  }

  add(labels) {
    for (const raw of labels) {
      const label = raw.trim();
      if (label && !this.values.includes(label) && this.values.length < this.max) this.values.push(label);
    }
    this.render();
  }

  set(labels) {
    this.values = [];
    this.add(labels);
  }

  remove(index) {
    this.values.splice(index, 1);
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.values.map((label, i) => el("li", { class: "chip" },
      el("span", { text: label }),
      el("button", { type: "button", class: "chip-remove", "aria-label": `remove ${label}`,
        onclick: () => { this.remove(i); this.entry.focus(); } }, "×"))));
  }
}
