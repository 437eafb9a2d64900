"""The live view of running jobs, without Streamlit reruns.

Watching a run used to rerun a Streamlit fragment every second: the server rebuilt the page's elements
and the browser re-rendered them, which on a 2-core machine took CPU from the run (docs/perf.md, "Watching
a run"). Here the browser polls one small JSON route instead, and extends its Plotly traces with the new
points only: per refresh the server reads the new events from SQLite and the browser draws what changed.
When every followed run has ended, the component triggers one rerun and the page shows its final charts
and tables as before.

The route is served by the ``st.App`` that ``app.py`` builds (``streamlit run app.py`` finds it); the page
registers the runs it follows as a ticket and hands the component the ticket's URL. Where no such app
serves the route (``AppTest``), ``SERVED`` stays False and the Learn page falls back to a timed fragment.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import plotly
import streamlit as st
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from mergecore.errors import MergecoreError
from mergecore.runs.follow import MAX_POINTS, RunSeries
from pages.ui import charts

PREFIX = "/api/mergecore"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
MAX_TICKETS = 64  # live views remembered (a tab's ticket lives as long as the page shows it)
CHART_S = 2.0  # charts redraw at most every 2 s (Plotly redraws are most of the browser's cost); progress text every poll
SERVED = False  # set by app.py when its st.App serves ROUTES


@dataclass
class Ticket:
    """The runs one live view follows, with the workers that started them (reaped on every poll)."""

    workers: object  # mergecore.runs.jobs.Workers
    series: list[RunSeries]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deltas(self, since: dict[str, tuple[int, int]]) -> dict:
        with self.lock:
            self.workers.reap()
            for s in self.series:
                s.update(self.workers.store)
            return {"runs": [s.delta(*since.get(s.run_id, (0, 0))) for s in self.series]}


TICKETS: OrderedDict[str, Ticket] = OrderedDict()
_TICKETS_LOCK = threading.Lock()


def ticket(workers, run_ids: list[str]) -> str:
    """Register a live view of ``run_ids``; returns its token (unguessable: the route serves run data)."""
    token = secrets.token_hex(16)
    with _TICKETS_LOCK:
        TICKETS[token] = Ticket(workers, [RunSeries(run_id) for run_id in run_ids])
        while len(TICKETS) > MAX_TICKETS:
            TICKETS.popitem(last=False)
    return token


COUNT = re.compile(r"[0-9]{1,12}")  # ASCII digits only ('²' is a digit to str.isdigit, not to int), bounded


def parse_since(text: str) -> dict[str, tuple[int, int]]:
    """'RUN:STEPS:EVALS,...' (what the browser already drew) -> {run: (steps, evals)}; junk is ignored."""
    out = {}
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) == 3 and COUNT.fullmatch(parts[1]) and COUNT.fullmatch(parts[2]):
            out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


async def live_route(request: Request) -> JSONResponse:
    found = TICKETS.get(request.path_params["token"])
    if found is None:
        return JSONResponse({"error": "this live view is no longer known to the server; reload the page"}, 404)
    since = parse_since(request.query_params.get("since", ""))
    try:
        body = await run_in_threadpool(found.deltas, since)
    except MergecoreError as exc:  # a followed run deleted from the store, a store that cannot be read: one line
        return JSONResponse({"error": " ".join(str(exc).split())}, 404, headers={"Cache-Control": "no-store"})
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def plotly_route(request: Request) -> FileResponse:
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


ROUTES = [Route(PREFIX + "/live/{token}", live_route), Route(PREFIX + "/plotly.min.js", plotly_route)]

_component = st.components.v2.component(
    "mergecore_live", js=(Path(__file__).with_name("live_view.js")).read_text(), isolate_styles=False)


def show(workers, series: list[RunSeries], tasks: list[str], refresh_s: float):
    """Mount the live view of ``series``; it triggers ``finished`` (one rerun) when every run has ended."""
    key = "live_ticket:" + ",".join(s.run_id for s in series)  # the same runs, the same view: no remount on reruns
    token = st.session_state.get(key)
    if token not in TICKETS:
        token = st.session_state[key] = ticket(workers, [s.run_id for s in series])
    style = {"colors": list(charts.COLORS), "run_colors": list(charts.RUN_COLORS), "dashes": list(charts.DASHES),
             "metrics": [list(m) for m in charts.METRICS]}
    layouts = {"loss": charts.loss_figure(series).to_plotly_json()["layout"],
               "coefs": charts.coef_figure([], tasks).to_plotly_json()["layout"],
               "collapse": charts.collapse_figure([]).to_plotly_json()["layout"]}
    data = {"url": f"{PREFIX}/live/{token}", "plotly": f"{PREFIX}/plotly.min.js", "refresh_ms": int(refresh_s * 1000),
            "chart_ms": int(max(CHART_S, refresh_s) * 1000),
            "max_points": MAX_POINTS, "tasks": tasks, "runs": [{"id": s.run_id, "label": s.label} for s in series],
            "style": style, "layouts": layouts}
    return _component(data=data, key="live_" + token, on_finished_change=lambda: None)
