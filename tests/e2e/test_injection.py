"""Real browser, untrusted text is text (issue 25, item 3): markdown and HTML from a deep link and from an adapter
config reach the page as the text typed. A listener on 127.0.0.1 counts the requests the payloads point at: no
image is fetched, no link is rendered, and the text is visible literally."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from .conftest import shot

JOINER = "\u2060"  # invisible; what the app puts after ':' and '@' so that remark makes no autolink


@pytest.fixture
def listener():
    """An HTTP server on a free 127.0.0.1 port recording every path asked of it; (port, paths)."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], paths
    httpd.shutdown()
    httpd.server_close()


def payloads(port: int) -> list[str]:
    return [f"![b](http://127.0.0.1:{port}/beacon.png)", "[click](http://evil.example)",
            f"<img src=http://127.0.0.1:{port}/img.png>", "www.evil.example"]


def nothing_active(page, port: int) -> None:
    """No element points at the listener or at evil.example, and no link was rendered from the payloads."""
    page.wait_for_timeout(1500)  # time for an image the page would have fetched
    found = page.evaluate("""(port) => [...document.querySelectorAll('img, a, source, iframe')]
        .map(e => e.getAttribute('src') || e.getAttribute('href') || '')
        .filter(u => u.includes(':' + port) || u.includes('evil.example'))""", port)
    assert found == [], found


def alert_text(page, words: str) -> str:
    alert = page.locator('[data-testid="stAlert"]').filter(has_text=words).first
    alert.wait_for()
    return alert.inner_text().replace(JOINER, "")


def test_a_deep_link_fetches_nothing_and_shows_its_text(server, page, listener):
    port, paths = listener
    texts = payloads(port)
    page.goto(f"{server}/learn?runs=" + quote(",".join(texts), safe=","))
    page.get_by_text("Learn merge coefficients").wait_for()
    page.locator('[data-testid="stAlert"]').filter(has_text="no run").nth(len(texts) - 1).wait_for()
    shot(page, "injection_deep_link")
    nothing_active(page, port)
    assert paths == []
    joined = "\n".join(page.locator('[data-testid="stAlert"]').all_inner_texts()).replace(JOINER, "")
    assert all(f"no run '{text}'" in joined for text in texts), joined


def test_an_adapter_config_fetches_nothing_and_shows_its_text(server, page, listener, tiny_setup, tmp_path):
    port, paths = listener
    base = " ".join(payloads(port))
    a, b = (shutil.copytree(d, tmp_path / d.name) for d in tiny_setup[1][:2])
    config = json.loads((a / "adapter_config.json").read_text())
    (a / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    page.goto(server)
    page.get_by_text("Pick LoRA adapters of one base model").wait_for()
    box = page.get_by_label("Adapter folders or hub ids, one per line (empty: the embedded demo kit)")
    box.fill(f"{a}\n{b}")
    box.blur()
    page.get_by_role("button", name="Load", exact=True).click()
    text = alert_text(page, "different base models")
    shot(page, "injection_adapter_config")
    nothing_active(page, port)
    assert paths == []
    assert base in text, text
