"""Untrusted text is text (issue 25, item 3): what comes from outside the app -- a deep link's query
parameter, an adapter config's ``base_model_name_or_path``, a task (adapter) name, a run's name and message --
reaches the page escaped (``pages.ui.text.plain``): the body of the ``st.error`` is the escaped form, never the
markdown that made the browser fetch an image or render a link. The real browser's view of the same payloads is
``tests/e2e/test_injection.py``.

One AppTest session (module scope) goes through the cases in turn.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mergecore.runs.store import RunStore

from .test_bad_input import edit_config

ROOT = Path(__file__).resolve().parents[2]
JOINER = "\u2060"  # WORD JOINER: what plain() puts after ":" and "@" (breaks autolinks and shortcodes)
BEACON = "http://127.0.0.1:9/beacon.png"
PAYLOADS = [f"![b]({BEACON})", "[click](http://evil.example)", f"<img src={BEACON}>"]
LINK = '<a href="http://evil.example">click</a>'  # Plotly renders this in trace names, legends and titles
NAMES = ["![b](beacon.png)", "[click](evil.example)", "<img src=beacon.png>"]  # folder names hold no '/'
TRICKY = PAYLOADS + NAMES + [
    "**bold** _it_ `code` $x^2$ ~~gone~~ :smile: :material/home: :red[red]", "# heading\n- item\n1. one\n> quote",
    "www.evil.example and someone@evil.example", "&lt;img src=x&gt; a | b", r"C:\new\x_y \[not a link\]",
    "adapter_config.json __init__.py snake_case_name"]


def literal(markdown: str) -> str:
    """The text a markdown body from ``plain`` shows: backslash escapes and word joiners removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown.replace(JOINER, ""))


def unescaped(markdown: str) -> list[str]:
    """Markdown and HTML syntax left active: a bracket or angle bracket without its backslash, a bare URL scheme
    or www., an e-mail address, an emoji / icon shortcode."""
    body = re.sub(r"\\.", "", markdown)
    return re.findall(r"[\[\]<>`*$~]|https?://|(?i:www\.)|\w@\w|:[\w/-]+:", body)


@pytest.mark.parametrize("text", TRICKY)
def test_plain_shows_each_payload_as_its_own_text(text):
    from pages.ui.text import plain

    body = plain(text)
    assert literal(body) == text and not unescaped(body), body


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from conftest import app_workspace, stop_workers

    with app_workspace(tmp_path_factory.mktemp("text_ws")) as ws:
        store = RunStore(ws)
        run_id = store.create(PAYLOADS[0], "learned", {"params": {"steps": 1}})
        store.finish(run_id, "failed", {}, message=f"could not read {PAYLOADS[1]} {PAYLOADS[2]}")
        other = store.create(LINK, "learned", {"params": {"steps": 1}})
        store.finish(other, "failed", {})
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.run()
        assert not at.exception, at.exception
        yield at, run_id, other
        stop_workers(ws)


def shows_escaped(bodies: list[str], *texts: str) -> None:
    """One of ``bodies`` shows every text literally, with no markdown or HTML left active in it."""
    assert any(all(t in literal(b) for t in texts) and not unescaped(b) for b in bodies), (texts, bodies)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_deep_link_shows_its_run_ids_as_text(app, payload):
    at, *_ = app
    at.query_params["runs"] = payload
    at.switch_page("pages/learn.py").run()
    assert not at.exception, at.exception
    shows_escaped([e.value for e in at.error], payload)


def load(at: AppTest, folders: list[Path]) -> list[str]:
    at.switch_page("pages/workspace.py").run()
    at.text_area(key="adapter_text").set_value("\n".join(map(str, folders)))
    at.radio(key="task_kind").set_value("demo tasks (by adapter name)").run()
    at.button(key="load_adapters").click().run()
    assert not at.exception, at.exception
    return [e.value for e in at.error]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_adapter_configs_base_model_is_text(app, tiny_setup, tmp_path, payload):
    at, *_ = app
    a, b = (shutil.copytree(d, tmp_path / d.name) for d in tiny_setup[1][:2])
    edit_config(a, base_model_name_or_path=payload)
    shows_escaped(load(at, [a, b]), payload)


@pytest.mark.parametrize("name", NAMES)
def test_a_task_name_is_text(app, tiny_setup, tmp_path, name):
    at, *_ = app
    folders = [shutil.copytree(tiny_setup[1][0], tmp_path / str(k) / name) for k in range(2)]
    shows_escaped(load(at, folders), name)  # adapter k is task k: two tasks of one name


def test_a_run_name_and_message_are_text(app):
    at, run_id, _ = app
    at.query_params["runs"] = run_id
    at.switch_page("pages/learn.py").run()
    assert not at.exception, at.exception
    shows_escaped([e.value for e in at.error], *PAYLOADS)  # "<name>:<id>: could not read <payload> <payload>"
    shows_escaped([p.proto.text for p in at.get("progress")], PAYLOADS[0])


def test_run_names_in_plotly_charts_are_text(app):
    """Plotly draws <a href>, <b>, ... in trace names: the Learn page's charts of two runs name them escaped."""
    import json

    at, run_id, other = app
    at.query_params["runs"] = f"{run_id},{other}"
    at.switch_page("pages/learn.py").run()
    assert not at.exception, at.exception
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    names = [t.get("name") or "" for spec in specs for t in spec["data"]]
    assert any("&lt;a href=" in n for n in names) and not any("<" in n for n in names), names


@pytest.mark.parametrize("text", [LINK, "<b>bold</b> & <img src=x>", "plain"])
def test_text_only_escapes_what_plotly_would_render(text):
    import numpy as np
    import plotly.graph_objects as go

    from pages.ui.charts import text_only

    fig = go.Figure(go.Bar(x=np.asarray([text, "b"]), y=[1, 2], name=text), layout={"title": {"text": text}})
    out = text_only(fig).to_plotly_json()
    want = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert out["data"][0]["name"] == want and list(out["data"][0]["x"]) == [want, "b"]
    assert out["layout"]["title"]["text"] == want and fig.data[0].name == text  # the figure itself is unchanged
