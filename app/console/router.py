"""Serves the reference run console (`/console`): one HTML page and its static ES modules.

The page holds no data and no token: it signs in with a pasted Supabase access token (kept in
sessionStorage) or a dev link whose URL fragment carries one (fragments never reach a server),
and calls the API from the browser like any other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

# Same-origin only, no inline script or style: a token pasted into the console cannot be sent elsewhere
# by injected markup, and the page cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/console")
async def console_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/console/")
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


class ConsoleAssets(StaticFiles):
    """Static files with the console's security headers."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount(app) -> None:
    app.include_router(router)
    app.mount("/console/assets", ConsoleAssets(directory=STATIC), name="console-assets")
