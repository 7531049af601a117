"""Headers every response carries (OWASP API8), set once where every response passes.

A ``on_response_prepare`` hook rather than a middleware: it also sees 304s, WebSocket
handshakes, static files and the answers aiohttp's router gives on its own (404, 405).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import hdrs, web, web_response

from server import keys
from server.settings import Settings

SERVER_NAME = "jangteo"  # never a version: it only helps someone match known exploits
CSP_HEADER = "Content-Security-Policy"
# On every response, whatever its type; the listing fast path (which answers before the
# hook could run) adds these same pairs.
EVERY_RESPONSE = (
    (hdrs.SERVER, SERVER_NAME),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


def page_csp(settings: Settings) -> str:
    """The policy of an HTML page that sets none itself: scripts and styles from this origin
    only, nothing inline, no framing; photos may come from the S3 origins configured."""
    photo_origins = " ".join(
        sorted(
            {
                _origin(url)
                for url in (
                    settings.s3_public_url,
                    settings.s3_presign_endpoint,
                    settings.s3_endpoint,
                )
                if url
            }
        )
    )
    extra = f" {photo_origins}" if photo_origins else ""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: blob:{extra}",
            f"connect-src 'self'{extra}",
            "font-src 'self'",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class SecurityHeaders:
    """The ``on_response_prepare`` callback; the page policy is built once."""

    def __init__(self, settings: Settings) -> None:
        self.page_csp = page_csp(settings)

    async def __call__(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        for name, value in EVERY_RESPONSE:
            headers[name] = value
        # Parsing the Content-Type costs every response; only one naming html can be a page.
        maybe_page = "html" in headers.get(hdrs.CONTENT_TYPE, "").lower()
        if maybe_page and response.content_type == "text/html" and CSP_HEADER not in headers:
            headers[CSP_HEADER] = self.page_csp  # pages with a policy of their own keep it


def setup_security_headers(app: web.Application) -> None:
    app.on_response_prepare.append(SecurityHeaders(app[keys.settings_key]))
    # aiohttp answers a request it cannot parse (400) without the app, naming itself and
    # its version by default; this is the only place that default can be changed.
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
