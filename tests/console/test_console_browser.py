"""The reference console in a real browser (Chromium via Playwright) against the real service and a
loopback upstream: find a failed run in the needs-attention list, resume it from its failed step
after checking the plan, and watch the new run succeed live; approve a pause exactly once; a viewer
gets no resume button (and the API refuses them anyway)."""
from __future__ import annotations

import uuid

from playwright.async_api import expect

from tests.conftest import linear, steps_by_key
from tests.console.conftest import screenshot

TIMEOUT = 20_000  # ms, for things that wait on the worker


def console_url(service, client, path: str = "") -> str:
    return f"{service.url}/console#token={client.token}" if not path else f"{service.url}/console#{path}"


async def sign_in(page, service, client, path: str = "/") -> None:
    await page.goto(console_url(service, client))
    await expect(page.locator("#who")).to_contain_text(client.user_id)
    if path != "/":
        await page.evaluate("h => { location.hash = h }", "#" + path)


async def test_resume_a_failed_run_from_the_console(page, service, world, make_client):
    owner = make_client()
    project = await owner.project("console")
    gate = f"console-{uuid.uuid4().hex[:8]}"
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("charge", "http_call", {"method": "POST", "url": f"{world.url}/gate/{gate}", "retry": {"max_attempts": 1}}),
        ("summary", "transform", {"expression": "steps.charge.body"})))
    run_id = await owner.start(wf["id"], {"amount": 42})
    assert (await owner.wait(run_id))["status"] == "failed"

    await sign_in(page, service, owner)
    # The needs-attention list shows the failed run; open it from there.
    link = page.get_by_role("link", name=f"Open run {run_id}")
    await expect(link).to_be_visible()
    await screenshot(page, "needs-attention")
    await link.click()
    await expect(page.locator("#run-status")).to_contain_text("failed")
    await expect(page.locator('svg.dag g[data-key="charge"]')).to_contain_text("failed")
    await expect(page.locator("#timeline li").first).to_be_visible()
    await screenshot(page, "run-failed")

    # The resume dialog: the failed step is offered, and the plan shows what is reused and re-run.
    await page.get_by_role("button", name="Resume…").click()
    dialog = page.locator("#resume-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_label("Step", exact=True)).to_have_value("charge")
    await expect(page.locator("#resume-plan")).to_contain_text("Reused (1): start")
    await expect(page.locator("#resume-plan")).to_contain_text("Re-run (2): charge, summary")
    await expect(page.locator('svg.dag g[data-key="charge"]')).to_have_class("node status-failed plan-rerun")
    await expect(page.locator('svg.dag g[data-key="start"]')).to_contain_text("reuse")
    await page.get_by_label("Reason (kept in the audit log)").fill("upstream fixed")
    await screenshot(page, "resume-dialog")

    world.open(gate)  # the upstream is fixed
    await page.get_by_role("button", name="Resume", exact=True).click()
    await expect(dialog).to_be_hidden()
    # The console now follows the new run live until it succeeds.
    await expect(page.locator("#run-status")).to_contain_text("succeeded", timeout=TIMEOUT)
    await expect(page.locator("#timeline")).to_contain_text("run_succeeded", timeout=TIMEOUT)
    new_id = page.url.rsplit("/", 1)[-1]
    assert new_id != run_id
    child = await owner.run(new_id)
    assert child["parent_run_id"] == run_id and child["status"] == "succeeded"
    steps = steps_by_key(child)
    assert steps["start"]["reused_from"] is not None and steps["charge"]["reused_from"] is None
    await expect(page.locator("#lineage")).to_contain_text("resumed from “charge”")
    await screenshot(page, "run-resumed")
    assert page.errors == []


async def test_a_pause_is_approved_once(browser, page, service, make_client):
    owner = make_client()
    project = await owner.project("approvals")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}), ("review", "pause", {"message": "approve big orders"}),
        ("ship", "transform", {"expression": "input.order"})))
    run_id = await owner.start(wf["id"], {"order": 7})
    assert (await owner.wait(run_id))["status"] == "paused"

    # A second operator has the same run open in another tab, before the first one approves.
    other = await browser.new_context()
    stale = await other.new_page()
    await sign_in(stale, service, owner, f"/runs/{run_id}")
    await expect(stale.get_by_role("button", name="Approve")).to_be_visible()

    await sign_in(page, service, owner, f"/runs/{run_id}")
    await page.get_by_label("Approve “review”: reason").fill("looks fine")
    await screenshot(page, "pause-approval")
    await page.get_by_role("button", name="Approve").click()
    await expect(page.locator("#run-status")).to_contain_text("succeeded", timeout=TIMEOUT)

    # The stale tab's approval is refused by the service and the refusal is shown.
    await stale.get_by_role("button", name="Approve").click()
    alert = stale.locator("#action-error")
    await expect(alert).to_contain_text("409")
    await expect(alert).to_contain_text("resolved")
    # Reloaded, the parent shows who resolved it and offers no approval any more.
    await stale.reload()
    await expect(stale.locator("#resolved-by")).not_to_have_text("—")
    await expect(stale.get_by_role("button", name="Approve")).to_have_count(0)
    await other.close()

    children = (await owner.run(run_id))["resumed_runs"]
    assert len(children) == 1  # exactly one approval reached downstream


async def test_a_viewer_sees_no_resume_button_and_the_api_refuses(page, service, world, make_client):
    owner, viewer = make_client(), make_client()
    project = await owner.project("viewers")
    await owner.add_member(project, viewer, "viewer")
    wf = await owner.workflow(project, linear(
        ("start", "webhook", {}),
        ("call", "http_call", {"url": f"{world.url}/status/500/viewer-{uuid.uuid4().hex[:6]}",
                               "retry": {"max_attempts": 1}})))
    run_id = await owner.start(wf["id"])
    assert (await owner.wait(run_id))["status"] == "failed"

    await sign_in(page, service, viewer, f"/runs/{run_id}")
    await expect(page.locator("#run-status")).to_contain_text("failed")
    await expect(page.get_by_text("You are a viewer of this project")).to_be_visible()
    await expect(page.get_by_role("button", name="Resume…")).to_have_count(0)
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    r = await viewer.resume(run_id, "call")
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")


async def test_a_bad_token_is_refused_and_the_sign_in_form_returns(page, service):
    await page.goto(f"{service.url}/console")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Access token").fill("not-a-jwt")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("form.signin .problem")).to_contain_text("401")
    # The token never went into the address bar.
    assert "token" not in page.url
