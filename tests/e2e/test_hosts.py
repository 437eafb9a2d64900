"""The server answers only its own host (pages/hosts.py): a page on another site that made its name resolve to
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
