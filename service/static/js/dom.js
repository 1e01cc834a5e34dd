// Small DOM helpers shared by the tabs.

/** el("li", {class: "x", text: "y"}, child, ...) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) {
        if (prop.startsWith("--")) node.style.setProperty(prop, v);
        else node.style[prop] = v;
      }
    }
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function showError(box, err) {
  box.textContent = err && err.describe ? err.describe() : String(err && err.message || err);
  box.hidden = false;
}

export function clearError(box) {
  box.textContent = "";
  box.hidden = true;
}

/** Disable a button while `work` runs; returns work's result. */
export async function busy(button, work, label = "Working…") {
  const text = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = label;
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = text;
  }
}

export const pct = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1)} %`;
export const secs = (s) => `${Number(s).toFixed(s < 10 ? 2 : 1)} s`;

/** A ranked list of bars: items [{label, value (0-1), note, emoji}]. */
export function drawBars(list, items, { color } = {}) {
  list.replaceChildren(...items.map((item, i) => {
    const bar = el("span", { class: "bar-fill", style: { width: `${Math.max(0.5, item.value * 100)}%` } });
    if (color) bar.style.background = color(item.label, i);
    return el("li", { class: "bar-row", "data-label": item.label, "data-value": item.value.toFixed(6) },
      el("span", { class: "bar-label", text: `${item.emoji ? item.emoji + " " : ""}${item.label}` }),
      el("span", { class: "bar-track", role: "presentation" }, bar),
      el("span", { class: "bar-value", text: pct(item.value) }),
      item.note ? el("span", { class: "bar-note", text: item.note }) : null);
  }));
}
