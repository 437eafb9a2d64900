"""Real browser: start the app, run a learning job from the Learn page, watch its chart grow."""

from __future__ import annotations

import time

from .conftest import shot


def _coef_points(page) -> int:
    """Number of points drawn in the coefficient chart (first trace)."""
    return page.evaluate("""() => {
        const plots = [...document.querySelectorAll('.js-plotly-plot')];
        const p = plots.find(el => (el.layout && el.layout.title && JSON.stringify(el.layout.title).includes('Merge coefficients')));
        if (!p || !p.calcdata || !p.calcdata.length) return 0;
        return p.calcdata[0].length || 0;  // points Plotly actually drew for the first trace
    }""")


def test_learn_page_chart_grows(server, page):
    page.goto(server + "/learn")
    page.get_by_text("Learn merge coefficients").wait_for()
    steps = page.get_by_role("spinbutton", name="steps")
    steps.fill("40")
    steps.press("Enter")
    page.get_by_role("button", name="Start", exact=True).click()
    deadline, counts = time.time() + 120, []
    while time.time() < deadline:
        counts.append(_coef_points(page) or 0)
        if len(set(c for c in counts if c > 0)) >= 2:
            break
        time.sleep(0.5)
    shot(page, "learn_running")
    grown = sorted(set(c for c in counts if c > 0))
    assert len(grown) >= 2, f"coefficient chart did not grow: {counts[-10:]}"
    # the page stays usable while the job runs: switch to Workspace and back
    page.goto(server + "/")  # Workspace is the default page: it lives at the root URL
    page.get_by_text("Compatibility report").wait_for()
    page.get_by_role("button", name="Load", exact=True).wait_for()  # widgets rendered, not skeletons
    page.wait_for_timeout(1500)
    shot(page, "workspace")
