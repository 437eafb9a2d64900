// The live view of running jobs (pages/ui/live_view.py): polls the ticket's JSON route and extends the Plotly
// traces with the new points only. Styling (colours, dashes, layouts) comes from pages/ui/charts.py via `data`:
// loss per run (one run: also each task's loss, dotted), coefficients (colour = task, dash = run), and the
// collapse panel (score, mean confidence, confidently-wrong share; colour = quantity, dash = run).

function loadPlotly(src) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__mergecorePlotly) {
    window.__mergecorePlotly = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => { window.__mergecorePlotly = null; reject(new Error("could not load " + src)); };
      document.head.appendChild(script);
    });
  }
  return window.__mergecorePlotly;
}

const CONFIG = { displaylogo: false, responsive: true };
// Plotly draws <a href>, <b>, ... in trace names and decodes entities only outside tags: run and task names come
// from outside, so they are escaped and show as typed (pages/ui/charts.text_only does the same in Python)
const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

class LiveView {
  constructor(data, root, finished) {
    this.d = data;
    this.root = root;
    this.finished = finished;
    this.runs = {};  // id -> {i, steps, evals, loss: [trace], task: {task: trace}, coefs: [traces], evals_t: [traces]}
    data.runs.forEach((r, i) => { this.runs[r.id] = { i, label: r.label, steps: 0, evals: 0 }; });
    this.multi = data.runs.length > 1;
    this.legend = { coefs: new Set(), collapse: new Set() };
    this.stopped = false;
    this.timer = null;
    this.drawnAt = 0;  // charts are extended at most every chart_ms; progress rows at every poll
    this.el = {};
    for (const name of ["status", "loss", "coefs", "collapse", "note"]) {
      this.el[name] = root.querySelector(`[data-part="${name}"]`);
    }
  }

  async start() {
    try {
      this.P = await loadPlotly(this.d.plotly);
    } catch (err) {
      this.el.note.textContent = err.message;
      return;
    }
    for (const name of ["loss", "coefs"]) {
      await this.P.newPlot(this.el[name], [], this.d.layouts[name], CONFIG);
    }
    if (this.multi) this.runLegend("coefs");
    this.poll();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  dash(i) { return this.d.style.dashes[i % this.d.style.dashes.length]; }
  color(k) { return this.d.style.colors[k % this.d.style.colors.length]; }

  runLegend(chart) {  // one legend entry per run showing its dash (traces are named by task or quantity)
    const traces = this.d.runs.map((r, i) => ({
      x: [null], y: [null], mode: "lines", name: esc(r.label), legendgroup: "runs",
      legendgrouptitle: { text: "runs" }, line: { color: "#444", dash: this.dash(i) } }));
    this.P.addTraces(this.el[chart], traces);
  }

  addTrace(chart, trace) {  // returns the new trace's index
    if (trace.name !== undefined) trace.name = esc(trace.name);
    const gd = this.el[chart];
    this.P.addTraces(gd, trace);
    return gd.data.length - 1;
  }

  showOnce(chart, name) {  // the first trace of a task / quantity carries the legend entry
    if (this.legend[chart].has(name)) return false;
    this.legend[chart].add(name);
    return true;
  }

  lossTraces(run) {
    const c = this.d.style.run_colors;
    run.loss = this.addTrace("loss", { x: [], y: [], mode: "lines", name: this.multi ? run.label : "total",
      line: { width: 3, dash: this.dash(run.i), color: c[run.i % c.length] } });
    run.task = {};
    if (!this.multi) {
      this.d.tasks.forEach((task, k) => {
        run.task[task] = this.addTrace("loss", { x: [], y: [], mode: "lines", name: task, line: { dash: "dot", color: this.color(k) } });
      });
    }
  }

  coefTraces(run, width) {
    const spectral = width !== this.d.tasks.length;
    run.spectral = spectral;
    const names = spectral ? ["mean gain (spectral)"] : this.d.tasks;
    run.coefs = names.map((name, k) => this.addTrace("coefs", { x: [], y: [], mode: "lines", name, legendgroup: name,
      showlegend: this.showOnce("coefs", name), line: { color: this.color(k), dash: this.dash(run.i) } }));
  }

  async evalTraces(run) {
    if (!this.collapseReady) {
      this.collapseReady = true;
      this.el.collapse.style.display = "block";
      await this.P.newPlot(this.el.collapse, [], this.d.layouts.collapse, CONFIG);
      if (this.multi) this.runLegend("collapse");
    }
    run.evalsT = this.d.style.metrics.map(([key, title], k) => this.addTrace("collapse", {
      x: [], y: [], name: title, legendgroup: key, showlegend: this.showOnce("collapse", key), mode: "lines+markers",
      line: { color: this.color(k), dash: this.dash(run.i) } }));
  }

  since() {
    return Object.entries(this.runs).map(([id, r]) => `${id}:${r.steps}:${r.evals}`).join(",");
  }

  async poll() {
    if (this.stopped) return;
    let body = null;
    try {
      const resp = await fetch(`${this.d.url}?since=${encodeURIComponent(this.since())}`, { cache: "no-store" });
      body = await resp.json();
      if (!resp.ok) throw new Error(body.error || resp.statusText);
      this.el.note.textContent = "";
    } catch (err) {
      this.el.note.textContent = `live view: ${err.message}`;
      if (!this.stopped) this.timer = setTimeout(() => this.poll(), 5000);
      return;
    }
    if (this.stopped) return;
    const done = body.runs.every((r) => r.done);
    if (done || Date.now() - this.drawnAt >= this.d.chart_ms) {  // not drawn: the next poll asks for the same points again
      for (const delta of body.runs) await this.apply(delta);
      this.drawnAt = Date.now();
    }
    this.status(body.runs);
    if (done) {
      this.finished("finished", Date.now());  // one rerun: the page shows the final charts and tables
      return;
    }
    const wait = document.hidden ? Math.max(5000, this.d.refresh_ms) : this.d.refresh_ms;
    this.timer = setTimeout(() => this.poll(), wait);
  }

  async apply(delta) {
    const run = this.runs[delta.id];
    const n = delta.steps.length;
    if (n) {
      if (run.loss === undefined) this.lossTraces(run);
      if (run.coefs === undefined) this.coefTraces(run, delta.coefs[0].length);
      const lossIdx = [run.loss], lossX = [delta.steps], lossY = [delta.loss];
      for (const [task, idx] of Object.entries(run.task)) {
        lossIdx.push(idx); lossX.push(delta.steps); lossY.push(delta.task_loss[task] || delta.steps.map(() => null));
      }
      this.extend("loss", lossIdx, lossX, lossY);
      const mean = (c) => c.reduce((a, b) => a + b, 0) / c.length;
      const coefY = run.coefs.map((_, k) => delta.coefs.map((c) => (run.spectral ? mean(c) : c[k])));
      this.extend("coefs", run.coefs, run.coefs.map(() => delta.steps), coefY);
      run.steps += n;
    }
    if (delta.evals.length) {
      if (run.evalsT === undefined) await this.evalTraces(run);
      const xs = delta.evals.map((e) => e[0]);
      const ys = this.d.style.metrics.map(([key], k) => delta.evals.map((e) =>
        (e[k + 1] === null ? null : e[k + 1] * (key === "score" ? 1 : 100))));
      this.extend("collapse", run.evalsT, run.evalsT.map(() => xs), ys);
      run.evals += delta.evals.length;
    }
  }

  extend(chart, idx, xs, ys) {  // append, then halve any trace past 2 x max_points (every other point, last kept)
    const gd = this.el[chart];
    this.P.extendTraces(gd, { x: xs, y: ys }, idx);
    const long = idx.filter((i) => gd.data[i].x.length > 2 * this.d.max_points);
    if (!long.length) return;
    const half = (a) => a.filter((_, j) => j % 2 === 0 || j === a.length - 1);
    this.P.restyle(gd, { x: long.map((i) => half(Array.from(gd.data[i].x))),
                         y: long.map((i) => half(Array.from(gd.data[i].y))) }, long);
  }

  status(runs) {  // one text + bar per run, updated in place (no DOM rebuilt when nothing changed)
    runs.forEach((r, i) => {
      let row = this.el.status.children[i];
      if (!row) {
        row = document.createElement("div");
        row.className = "mc-run";
        row.append(document.createElement("div"), document.createElement("progress"));
        row.lastChild.max = 1;
        this.el.status.append(row);
      }
      const text = r.text + (r.message && ["failed", "interrupted"].includes(r.status) ? `: ${r.message}` : "");
      if (row.firstChild.textContent !== text) row.firstChild.textContent = text;
      if (row.lastChild.value !== r.progress) row.lastChild.value = r.progress;
    });
  }
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = document.createElement("div");
  root.className = "mc-live";
  root.innerHTML = `
    <style>
      .mc-live .mc-run { margin: 0.2rem 0 0.5rem; font-size: 0.9rem; }
      .mc-live progress { width: 100%; height: 0.5rem; accent-color: var(--st-primary-color, #ff4b4b); }
      .mc-live .mc-row { display: flex; gap: 1rem; }
      .mc-live .mc-row > div { flex: 1 1 0; min-width: 0; }
      .mc-live .mc-note { color: #b00; font-size: 0.85rem; }
    </style>
    <div data-part="status"></div>
    <div class="mc-row"><div data-part="loss"></div><div data-part="coefs"></div></div>
    <div data-part="collapse" style="display: none"></div>
    <div class="mc-note" data-part="note"></div>`;
  parentElement.appendChild(root);
  const view = new LiveView(data, root, setTriggerValue);
  view.start();
  return () => { view.stop(); root.remove(); };
}
