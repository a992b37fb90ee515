"""The web chat page served at `/`: one static HTML file (inline CSS and JavaScript, no CDN, no build step)."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi.responses import HTMLResponse, Response


def _hashes(page: str, tag: str) -> str:
    """CSP source expressions allowing exactly the page's own inline <script> or <style> blocks."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def add_routes(app) -> None:
    page = resources.files("pocketlm.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
    # only the page's own script and style run, it talks only to this server, and no other site may frame it
    csp = (f"default-src 'none'; script-src {_hashes(page, 'script')}; style-src {_hashes(page, 'style')}; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=headers)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)
