// The one way the page talks to the service: the API key (asked for on a 401, kept in
// sessionStorage, sent as a Bearer token), the demo flag, and errors as ApiError.

const KEY_STORAGE = "audioserve.apiKey";
const demoListeners = [];

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** What the user reads: status, code, the server's own message, when to retry. */
  describe() {
    const head = this.status ? `${this.status} ${this.code || ""}`.trim() : (this.code || "error");
    const retry = this.retryAfter ? ` (Retry-After: ${this.retryAfter} s)` : "";
    return `${head}: ${this.message}${retry}`;
  }
}

export function onDemo(listener) {
  demoListeners.push(listener);
}

export function noteDemo(flag) {
  if (flag) demoListeners.forEach((listener) => listener());
}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null;
  }
}

/** WebSocket subprotocols for the live route: the key rides in Sec-WebSocket-Protocol
 * (browsers cannot set Authorization on a WebSocket; a URL would put it in logs). */
export function liveProtocols() {
  const key = storedKey();
  return ["audioserve.live.v1", ...(key ? [`bearer.${key}`] : [])];
}

let pendingKey = null;

/** Ask for the key once, however many requests got a 401 meanwhile. */
function askKey(rejected) {
  if (!pendingKey) {
    pendingKey = promptForKey(rejected).finally(() => { pendingKey = null; });
  }
  return pendingKey;
}

function promptForKey(rejected) {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  error.hidden = !rejected;
  error.textContent = rejected ? "That key was refused; try again." : "";
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      resolve(key || null);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}

async function errorFrom(response) {
  const retryAfter = response.headers.get("retry-after");
  let code = "http_error";
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    const err = body && body.error;
    if (err && typeof err === "object") {
      code = err.code || err.type || code;
      message = err.message || message;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, code, message, retryAfter);
}

/**
 * fetch() with the stored key; on 401 asks for a key and retries. Resolves with the
 * Response when it is ok, else throws ApiError with the server's message.
 */
export async function request(path, options = {}) {
  let refused = false;
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = storedKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "network_error", `could not reach the server (${err.message})`);
    }
    if (response.status === 401) {
      await response.body?.cancel();
      const given = await askKey(refused || Boolean(key));
      if (!given) throw new ApiError(401, "unauthorized", "an API key is needed for this request");
      refused = true;
      continue;
    }
    if (!response.ok) throw await errorFrom(response);
    if (response.headers.get("x-audioserve-demo") === "true") noteDemo(true);
    return response;
  }
}

/** request() for JSON answers; notes the demo flag of the body. */
export async function requestJson(path, options = {}) {
  const response = await request(path, options);
  const body = await response.json();
  if (body && body.demo) noteDemo(true);
  return body;
}

export function postJson(path, body, options = {}) {
  return requestJson(path, {
    ...options,
    method: "POST",
    headers: { "Content-Type": "application/json", ...(options.headers || {}) },
    body: JSON.stringify(body),
  });
}
