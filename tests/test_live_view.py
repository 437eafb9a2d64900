"""The live view's JSON route (pages/ui/live_view.py): what the browser polls, checked against the run store;
app.py is the ASGI app `streamlit run` serves, with these routes."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.requests import Request

from mergecore.runs.jobs import Workers
from mergecore.runs.store import RunStore
from pages.ui import live_view

ROOT = Path(__file__).resolve().parents[1]


def get(path: str, query: str = ""):
    """Call the route matching ``path`` as the server would; (status, body)."""
    for route in live_view.ROUTES:
        match, child = route.matches({"type": "http", "path": path, "method": "GET"})
        if match.name == "FULL":
            scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(), "headers": [],
                     **child}
            with ThreadPoolExecutor(1) as pool:  # its own event loop (Playwright's may be running in this thread)
                response = pool.submit(asyncio.run, route.endpoint(Request(scope))).result()
            return response.status_code, response
    raise AssertionError(f"no route for {path}")


def test_since_is_read_per_run_and_junk_is_ignored():
    assert live_view.parse_since("a:3:1,b:0:0") == {"a": (3, 1), "b": (0, 0)}
    assert live_view.parse_since("") == {} and live_view.parse_since("a:x:1,b:2,c:-1:0") == {}


def test_the_route_serves_only_what_the_browser_has_not_drawn(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("js", "learned", {"params": {"steps": 3}})
    for k in (1, 2):
        store.add_event(run_id, "step", k, {"loss": 1.0 / k, "task_loss": {"a": None}, "coefs": [0.25 * k, 0.5]})
    token = live_view.ticket(Workers(store), [run_id])
    status, response = get(f"{live_view.PREFIX}/live/{token}")
    assert status == 200 and response.headers["cache-control"] == "no-store"
    (run,) = json.loads(response.body)["runs"]
    assert run["steps"] == [1, 2] and run["loss"] == [1.0, 0.5] and run["coefs"] == [[0.25, 0.5], [0.5, 0.5]]
    assert run["task_loss"] == {"a": [None, None]} and not run["done"]
    store.add_event(run_id, "step", 3, {"loss": 0.25, "task_loss": {"a": 0.1}, "coefs": [0.75, 0.5]})
    store.finish(run_id, "done", {"scores": {}})
    _, response = get(f"{live_view.PREFIX}/live/{token}", f"since={run_id}:2:0")
    (run,) = json.loads(response.body)["runs"]
    assert run["steps"] == [3] and run["coefs"] == [[0.75, 0.5]] and run["done"] and run["status"] == "done"


def test_an_unknown_ticket_is_one_line_saying_what_to_do():
    status, response = get(f"{live_view.PREFIX}/live/0123abcd")
    assert status == 404 and json.loads(response.body) == {
        "error": "this live view is no longer known to the server; reload the page"}


def test_old_tickets_are_forgotten(tmp_path):
    workers = Workers(RunStore(tmp_path))
    first = live_view.ticket(workers, [])
    for _ in range(live_view.MAX_TICKETS):
        live_view.ticket(workers, [])
    assert first not in live_view.TICKETS and len(live_view.TICKETS) == live_view.MAX_TICKETS


def test_plotly_is_served_from_the_installed_package():
    status, response = get(f"{live_view.PREFIX}/plotly.min.js")
    assert status == 200 and Path(response.path) == live_view.PLOTLY_JS and live_view.PLOTLY_JS.stat().st_size > 1e6


def test_streamlit_run_serves_app_py_through_its_asgi_app():
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"
    assert "routes=live_view.ROUTES" in (ROOT / "app.py").read_text()


def test_since_counts_are_ascii_digits_only():
    """'²' is a digit to str.isdigit but not to int(): it raised (HTTP 500); now junk like any other."""
    assert live_view.parse_since("a:²:0,b:0:٣,c:1:2") == {"c": (1, 2)}
    assert live_view.parse_since("a:" + "9" * 5000 + ":0") == {}  # int() refuses > 4300 digits


def test_the_route_ignores_a_since_with_unicode_digits(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("js", "learned", {"params": {"steps": 3}})
    store.add_event(run_id, "step", 1, {"loss": 1.0, "task_loss": {}, "coefs": [0.5]})
    token = live_view.ticket(Workers(store), [run_id])
    status, response = get(f"{live_view.PREFIX}/live/{token}", f"since={run_id}:%C2%B2:0")
    assert status == 200 and json.loads(response.body)["runs"][0]["steps"] == [1]


def test_a_run_deleted_while_followed_is_a_one_line_404(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create("js", "learned", {"params": {"steps": 3}})
    token = live_view.ticket(Workers(store), [run_id])
    assert get(f"{live_view.PREFIX}/live/{token}")[0] == 200
    store.delete(run_id)
    status, response = get(f"{live_view.PREFIX}/live/{token}")
    body = json.loads(response.body)
    assert status == 404 and list(body) == ["error"] and run_id in body["error"] and "\n" not in body["error"]
