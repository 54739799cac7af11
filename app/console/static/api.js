// The console's API client: fetch with the bearer token, problem+json errors, and a fetch-based
// Server-Sent Events reader (the native EventSource cannot send Authorization, and a token in a
// URL would end up in logs and history).

const TOKEN_KEY = "meshhook.console.token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** The subject (user id) of a JWT, read without verifying it: for display only. */
export function tokenSubject(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).sub || null;
  } catch {
    return null;
  }
}

/** An RFC 9457 problem answer; `problem` holds the whole body (eligible_steps, active_run_id, …). */
export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && typeof problem === "object" ? problem.detail || problem.title : String(problem || "");
    super(`${status}: ${detail}`);
    this.status = status;
    this.problem = problem && typeof problem === "object" ? problem : { detail };
  }
}

export async function api(method, path, { body, headers = {} } = {}) {
  const h = { Accept: "application/json", ...headers };
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  const init = { method, headers: h };
  if (body !== undefined) {
    h["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, data);
  return { data, status: res.status, location: res.headers.get("Location") };
}

function parseBlock(block) {
  const ev = { id: null, event: "message", data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the heartbeat
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") ev.id = value;
    else if (field === "event") ev.event = value;
  }
  if (!data.length) return null;
  ev.data = data.join("\n");
  return ev;
}

/**
 * Follows an event stream: calls onEvent(parsedJson, sseEvent) for every event, reconnecting with
 * Last-Event-ID when the connection drops, until the server ends the stream (the run settled) or
 * `signal` aborts. Resolves with the last event id seen.
 */
export async function followEvents(path, onEvent, { signal, lastEventId = null } = {}) {
  let last = lastEventId;
  let backoff = 250;
  while (!signal?.aborted) {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${getToken()}` };
    if (last) headers["Last-Event-ID"] = last;
    let res;
    try {
      res = await fetch(path, { headers, signal });
    } catch (err) {
      if (signal?.aborted) break;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 5000);
      continue;
    }
    if (!res.ok) {
      const type = res.headers.get("content-type") || "";
      throw new ApiError(res.status, type.includes("json") ? await res.json() : await res.text());
    }
    backoff = 250;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let ended = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { ended = true; break; }
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const ev = parseBlock(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          if (ev) {
            if (ev.id) last = ev.id;
            onEvent(JSON.parse(ev.data), ev);
          }
        }
      }
    } catch (err) {
      if (signal?.aborted) break;
    }
    if (ended) break; // the server closed the stream on purpose: the run reached a final or paused state
  }
  return last;
}
