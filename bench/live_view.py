"""What watching a run costs: the same 150-step demo JS run from the CLI and from the app's Learn page with
the page open in a real browser (Debian Chromium driven by Playwright) for the whole run.

    python bench/live_view.py                      # 150 steps, 2 rounds (CLI, app, CLI, app), prints JSON
    python bench/live_view.py --steps 40 --rounds 1 --out docs/perf/live_view.json

Both runs use one fresh workspace whose baseline cache is filled first (`mergecore eval --demo`), so
neither pays for the baselines. Reported per round: the learner's own seconds (Stage 1 + the steps, from the
run's result), the wall time (CLI: the process; app: Start click to the stored 'done'), the app / CLI ratios
and the time from Start to the first point of the live coefficient chart (the Learn page is opened once
before the rounds, as a user would, so the app's spare worker has done its imports). docs/perf.md records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mergecore.runs.store import RunStore  # noqa: E402

CHART_POINTS = """() => {
    const p = [...document.querySelectorAll('.js-plotly-plot')].find(el => el.layout && el.layout.title
        && JSON.stringify(el.layout.title).includes('Merge coefficients'));
    return (p && p.calcdata && p.calcdata.length) ? (p.calcdata[0].length || 0) : 0;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(ws: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MERGECORE_WORKSPACE": str(ws), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("streamlit did not become healthy")


def cli_run(ws: Path, steps: int) -> dict:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mergecore", "learn", "--demo", "--objective", "js", "--granularity", "task",
                    "--steps", str(steps), "--workspace", str(ws), "--name", "cli"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rec = next(r for r in RunStore(ws).list() if r.name == "cli")
    RunStore(ws).delete(rec.id)  # so the next round finds its own run
    return {"learner_s": rec.result["seconds"], "wall_s": wall}


def app_run(page, url: str, ws: Path, steps: int) -> dict:
    page.goto(url + "/learn")
    page.get_by_text("Learn merge coefficients").wait_for()
    box = page.get_by_role("spinbutton", name="Optimisation steps", exact=True)
    box.fill(str(steps))
    box.blur()  # no Enter: the form starts runs only on its buttons
    before = {r.id for r in RunStore(ws).list()}
    page.get_by_role("button", name="Start", exact=True).click()
    t0, first_chart = time.perf_counter(), None
    store = RunStore(ws)
    while True:
        if first_chart is None and page.evaluate(CHART_POINTS) > 0:
            first_chart = time.perf_counter() - t0
        runs = [r for r in store.list() if r.id not in before and r.kind == "learned"]
        if runs and runs[0].status not in ("running",):
            break
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    assert runs[0].status == "done", runs[0].message
    return {"learner_s": runs[0].result["seconds"], "wall_s": wall, "first_chart_s": first_chart}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    ws = Path(tempfile.mkdtemp(prefix="mergecore-live-view-"))
    subprocess.run([sys.executable, "-m", "mergecore", "eval", "--demo", "--workspace", str(ws)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fills the baseline cache both runs then reuse
    port = free_port()
    app = start_app(ws, port)
    rounds = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/learn")  # a user opening the app: the workbench loads, a spare
            page.get_by_text("Learn merge coefficients").wait_for()  # worker starts its imports
            for _ in range(args.rounds):
                cli = cli_run(ws, args.steps)
                web = app_run(page, f"http://127.0.0.1:{port}", ws, args.steps)
                rounds.append({"cli": cli, "app": web, "learner_ratio": web["learner_s"] / cli["learner_s"],
                               "wall_ratio": web["wall_s"] / cli["wall_s"]})
                print(json.dumps(rounds[-1]), flush=True)
            browser.close()
    finally:
        app.terminate()
        app.wait(20)
        shutil.rmtree(ws, ignore_errors=True)
    summary = {"steps": args.steps, "cpus": os.cpu_count(), "rounds": rounds,
               "learner_ratio": sum(r["learner_s"] for r in (x["app"] for x in rounds))
               / sum(r["learner_s"] for r in (x["cli"] for x in rounds)),
               "wall_ratio": sum(x["app"]["wall_s"] for x in rounds) / sum(x["cli"]["wall_s"] for x in rounds),
               # pooled ratios above; the median round below is robust to one disturbed run on a shared machine
               "median_learner_ratio": statistics.median(x["learner_ratio"] for x in rounds)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
