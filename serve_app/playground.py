"""The web playground: one static page (HTML + CSS + JS) served by the ingress itself.

`mount_playground(app)` adds two routes:

* `GET /`                the page (`static/playground.html`)
* `GET /static/{file}`   a file from `serve_app/static/`, nothing else

The files ship inside the package (see `[tool.setuptools.package-data]`): no build step, no CDN,
nothing fetched from elsewhere, so the page works offline. It talks only to the public API
(`/v1/voices`, `/v1/models`, `/v1/audio/speech`).

Only plain names straight inside the static folder are served (no sub-folders, no dot-files, a
fixed set of extensions), so no request can reach outside it. The page and its assets are public
even when the API requires a key: the page is what asks the user for one.
"""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE = "playground.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# one plain file name: letters, digits, '-', '_', one dot before a known extension
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.(html|js|css|svg|png|ico)$")

# Everything the page needs comes from this origin; audio is decoded in JS, downloads are blob: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'none'")


def _static_response(name: str) -> Response:
    if not _SAFE_NAME.match(name):
        raise HTTPException(404, f"no static file {name!r}")
    path = STATIC_DIR / name
    # belt and braces: the resolved file must still sit directly in STATIC_DIR
    if path.resolve().parent != STATIC_DIR or not path.is_file():
        raise HTTPException(404, f"no static file {name!r}")
    headers = {
        "Cache-Control": "no-cache",  # revalidate, so a server upgrade never pairs an old page with new JS
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix], headers=headers)


def mount_playground(app: FastAPI) -> None:
    """Serve the playground page at `GET /` and its assets at `GET /static/{file}` (idempotent)."""
    if any(getattr(route, "name", None) == "playground_page" for route in app.router.routes):
        return

    @app.get("/", include_in_schema=False)
    async def playground_page() -> Response:
        return _static_response(PAGE)

    @app.get("/static/{file}", include_in_schema=False)
    async def playground_static(file: str) -> Response:
        return _static_response(file)
