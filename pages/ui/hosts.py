"""The server answers only its own host: an ASGI middleware for the ``st.App`` of app.py.

A page on another site can make its own name resolve to 127.0.0.1 (DNS rebinding) and then talk to this server
from the user's browser, with a matching Origin: binding to 127.0.0.1 does not keep it out, the Host header
does. HTTP requests and websockets whose Host is not one of ours are refused (HTTP 403; a websocket is closed
before it is accepted, which the client sees as 403). Ours, with any port: the loopback names (``localhost``,
``127.0.0.1``, ``[::1]``), the configured ``server.address``, the address the connection arrived on (the
machine's own IP when served on a network), and the names listed in ``MERGECORE_ALLOWED_HOSTS`` (comma-separated,
for a server reached by a name, e.g. behind a proxy).
"""

from __future__ import annotations

import os

LOOPBACK = {"localhost", "127.0.0.1", "::1"}
WILDCARD = {"", "0.0.0.0", "::"}
REFUSAL = b"this server answers only its own host name; open it as http://localhost:PORT or set MERGECORE_ALLOWED_HOSTS"


def host_name(value: str) -> str:
    """'Example.org:8501' -> 'example.org', '[::1]:8501' -> '::1' (the port does not matter)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts() -> set[str]:
    from streamlit import config

    names = {host_name(h) for h in os.environ.get("MERGECORE_ALLOWED_HOSTS", "").split(",") if h.strip()}
    address = host_name(str(config.get_option("server.address") or ""))
    return LOOPBACK | names | ({address} - WILDCARD)


class HostCheck:
    """Refuses HTTP requests and websockets whose ``Host`` header is not ours (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    def ours(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        local = host_name(str((scope.get("server") or ("",))[0] or ""))
        return bool(host) and (host in allowed_hosts() or (host == local and local not in WILDCARD))

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.ours(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            return await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets 403
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": REFUSAL})
