// The page: tabs (keyboard: arrows, Home, End; the URL's #hash names the tab), the demo
// banner, and each tab's set-up.

import { noteDemo, onDemo, requestJson } from "./api.js";
import { setupClassify } from "./classify.js";
import { $ } from "./dom.js";
import { setupEmotion } from "./emotion.js";
import { loadVoices, setupSpeech } from "./speech.js";
import { setupStatus, statusVisible } from "./status.js";

const TABS = ["classify", "emotion", "speech", "status"];

function select(name, { focus = false } = {}) {
  if (!TABS.includes(name)) name = TABS[0];
  for (const tab of TABS) {
    const button = $(`tab-${tab}`);
    const active = tab === name;
    button.setAttribute("aria-selected", String(active));
    button.tabIndex = active ? 0 : -1;
    $(`panel-${tab}`).hidden = !active;
    if (active && focus) button.focus();
  }
  statusVisible(name === "status");
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

function setupTabs() {
  const list = $("tabs");
  list.addEventListener("click", (e) => {
    const tab = e.target.closest('[role="tab"]');
    if (tab) select(tab.id.slice(4));
  });
  list.addEventListener("keydown", (e) => {
    const current = TABS.indexOf(document.activeElement.id.slice(4));
    if (current < 0) return;
    const moves = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: TABS.length - 1 };
    if (!(e.key in moves)) return;
    e.preventDefault();
    select(TABS[(moves[e.key] + TABS.length) % TABS.length], { focus: true });
  });
  window.addEventListener("hashchange", () => select(location.hash.slice(1)));
  select(location.hash.slice(1));
}

async function boot() {
  onDemo(() => { $("demo-banner").hidden = false; });
  setupTabs();
  setupClassify();
  setupEmotion();
  setupSpeech();
  setupStatus();
  let models = [];
  try {
    models = (await requestJson("v1/models")).data; // a 401 asks for the key here
  } catch {
    return; // the tabs show their own errors when used
  }
  noteDemo(models.some((m) => m.demo));
  if (models.some((m) => m.kind === "chattts")) await loadVoices();
}

boot();
