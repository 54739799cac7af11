"""What a console on another origin (the SvelteKit app) can do from a real browser: preflighted
requests with Authorization and Idempotency-Key, the Location header of a 202, problem+json bodies,
and an event stream read with fetch (Authorization + Last-Event-ID) that ends when the run pauses."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests import support


@pytest.fixture(scope="module")
def other_origin():
    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>other origin</title><p>console</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def cors_api(service_env, logs_dir, other_origin):
    env = dict(service_env, MESHHOOK_CORS_ORIGINS=other_origin)
    proc, base = support.start_api(env, logs_dir / "console-cors.log")
    yield base
    proc.terminate()


SCRIPT = """
async ([api, token]) => {
  const auth = {Authorization: `Bearer ${token}`};
  const json = {...auth, "Content-Type": "application/json"};
  const out = {};
  const project = await (await fetch(`${api}/projects`, {method: "POST", headers: json,
                                                          body: JSON.stringify({name: "cors"})})).json();
  const wf = await (await fetch(`${api}/projects/${project.id}/workflows`, {method: "POST", headers: json,
    body: JSON.stringify({slug: "cors", name: "cors", definition: {
      nodes: [{id: "start", data: {type: "webhook"}}, {id: "review", data: {type: "pause"}}],
      edges: [{source: "start", target: "review"}]}})})).json();
  const started = await fetch(`${api}/workflows/${wf.id}/runs`, {method: "POST", headers: json,
                                                                  body: JSON.stringify({input: {}})});
  const run = await started.json();
  out.startLocation = started.headers.get("Location");
  for (let i = 0; i < 200; i++) {
    const r = await (await fetch(`${api}/runs/${run.id}`, {headers: auth})).json();
    if (r.status === "paused") break;
    await new Promise(r => setTimeout(r, 50));
  }
  // A fetch-based event stream: Authorization and Last-Event-ID are sent, and the stream ends by
  // itself because the run is paused.
  const first = await (await fetch(`${api}/runs/${run.id}/events`, {headers: auth})).json();
  const stream = await fetch(`${api}/runs/${run.id}/events`, {headers: {...auth, Accept: "text/event-stream",
                                                              "Last-Event-ID": String(first.items[0].id)}});
  out.streamType = stream.headers.get("content-type");
  out.streamText = await stream.text();
  const resumed = await fetch(`${api}/runs/${run.id}/resume`, {method: "POST",
    headers: {...json, "Idempotency-Key": crypto.randomUUID()}, body: JSON.stringify({from_step: "review"})});
  out.resumeStatus = resumed.status;
  out.resumeLocation = resumed.headers.get("Location");
  out.newRunId = (await resumed.json()).id;
  const missing = await fetch(`${api}/runs/00000000-0000-4000-8000-000000000000`, {headers: auth});
  out.problemType = missing.headers.get("content-type");
  out.problem = await missing.json();
  out.requestId = missing.headers.get("X-Request-ID");
  return out;
}
"""


async def test_a_console_on_another_origin_can_use_the_api(page, cors_api, other_origin, keys):
    token = keys.token(support.new_user())
    await page.goto(other_origin + "/")
    out = await page.evaluate(SCRIPT, [cors_api, token])
    assert out["startLocation"].startswith("/runs/")
    assert out["resumeStatus"] == 202
    assert out["resumeLocation"] == f"/runs/{out['newRunId']}"
    assert out["streamType"].startswith("text/event-stream")
    assert "event: run_paused" in out["streamText"]  # the stream replayed after Last-Event-ID and ended
    assert "event: run_queued" not in out["streamText"]  # the first event was before Last-Event-ID
    assert out["problemType"].startswith("application/problem+json")
    assert out["problem"]["status"] == 404 and out["problem"]["request_id"] == out["requestId"]
    assert page.errors == []
