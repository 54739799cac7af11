"""Browser fixtures: Debian's Chromium driven by Playwright for Python (no browser download).

CI must run these: without Chromium they fail there, and elsewhere they are skipped with a loud
reason (`apt-get install chromium`). Set MESHHOOK_SCREENSHOTS=1 to (re)write docs/console/*.png."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import ROOT

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]
SHOTS = ROOT / "docs" / "console"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("MESHHOOK_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
async def browser():
    exe = chromium_path()
    if exe is None:
        message = "Chromium is not installed (apt-get install chromium): the browser tests of the console cannot run"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("playwright is not installed (pip install -e '.[dev]')")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def page(browser):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    pg = await context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors  # type: ignore[attr-defined]  # JS exceptions, asserted empty by the tests
    yield pg
    await context.close()


async def screenshot(page, name: str) -> None:
    """Saves docs/console/<name>.png when MESHHOOK_SCREENSHOTS is set (the docs' pictures)."""
    if os.environ.get("MESHHOOK_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.evaluate("() => { const t = document.getElementById('toast'); if (t) t.hidden = true; }")
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
