"""The server answers only its own host (pages/ui/hosts.py): a page on another site that made its name resolve to
127.0.0.1 (DNS rebinding) sends ``Host: evil.example`` and a matching Origin; the real server refuses the page
and the websocket that streams the app. The loopback names, with any port, still work."""

from __future__ import annotations

import base64
import http.client
import os
import socket
from urllib.parse import urlsplit

import pytest

FOREIGN = "evil.example"


def _addr(server: str) -> tuple[str, int]:
    u = urlsplit(server)
    return u.hostname, u.port


def http_get(server: str, path: str, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*_addr(server), timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host)
    conn.putheader("Origin", f"http://{host}")
    conn.endheaders()
    response = conn.getresponse()
    status, body = response.status, response.read()
    conn.close()
    return status, body


def websocket_upgrade(server: str, host: str) -> bytes:
    """The status line the server answers a websocket upgrade of the app's stream with."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(_addr(server), timeout=10) as s:
        s.sendall((f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n").encode())
        return s.recv(4096).split(b"\r\n", 1)[0]


@pytest.mark.parametrize("host", [FOREIGN, f"{FOREIGN}:{{port}}", "127.0.0.1.evil.example", "localhost.evil.example:{port}"])
def test_a_foreign_host_is_refused(server, host):
    host = host.format(port=_addr(server)[1])
    for path in ("/", "/_stcore/health", "/learn?runs=x", "/api/mergecore/plotly.min.js"):
        status, body = http_get(server, path, host)
        assert status == 403 and b"only its own host" in body, (path, status, body[:200])
    assert b" 403 " in websocket_upgrade(server, host) + b" "


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "localhost", "[::1]:{port}"])
def test_the_servers_own_host_works(server, host):
    host = host.format(port=_addr(server)[1])
    assert http_get(server, "/_stcore/health", host) == (200, b"ok")
    assert http_get(server, "/", host)[0] == 200
    assert websocket_upgrade(server, host).startswith(b"HTTP/1.1 101")


def ask(host: str, server=("127.0.0.1", 8501), kind: str = "http") -> list[dict]:
    """What HostCheck sends for one request with ``Host: host`` arriving on ``server`` (the app answers 200)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from pages.ui.hosts import HostCheck

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        return {"type": "websocket.connect"}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": kind, "path": "/", "headers": [(b"host", host.encode())], "server": server}
    with ThreadPoolExecutor(1) as pool:  # its own event loop (Playwright's may be running in this thread)
        pool.submit(asyncio.run, HostCheck(app)(scope, receive, send)).result()
    return sent


def test_the_host_rule_without_a_server(monkeypatch):
    from pages.ui.hosts import host_name

    assert [host_name(h) for h in ("Example.ORG:8501", "[::1]:8501", "127.0.0.1", "::1")] == [
        "example.org", "::1", "127.0.0.1", "::1"]
    assert ask("localhost:1")[0]["status"] == 200 and ask("[::1]")[0]["status"] == 200
    assert ask("evil.example")[0]["status"] == 403 and ask("")[0]["status"] == 403
    assert ask("evil.example", kind="websocket") == [{"type": "websocket.close", "code": 1008}]
    # served on the network (0.0.0.0): the address a request arrived on is ours, a name is not unless listed
    assert ask("192.168.1.5:8501", server=("192.168.1.5", 8501))[0]["status"] == 200
    assert ask("merge.lab:8501", server=("192.168.1.5", 8501))[0]["status"] == 403
    monkeypatch.setenv("MERGECORE_ALLOWED_HOSTS", "merge.lab, other.lab:80")
    assert ask("merge.lab:8501", server=("192.168.1.5", 8501))[0]["status"] == 200
