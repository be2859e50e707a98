// pellucid explorer: one dependency-free script. Every string from the data is put into the
// page as text (textContent / createTextNode / setAttribute), never parsed as HTML.
"use strict";
(function () {
  const MANIFEST = JSON.parse(document.getElementById("px-manifest").textContent);
  const MODE = document.body.getAttribute("data-mode");
  const METRIC_LABELS = {
    deletion_auc: "deletion AUC ↓", insertion_auc: "insertion AUC ↑",
    faithfulness: "faithfulness ↑", completeness_gap: "completeness gap",
    max_sensitivity: "max-sensitivity ↓", sparseness: "sparseness", complexity: "complexity",
  };
  const metricLabel = (ds, name) => (name === "agreement" ? "agreement (ρ) w/ " + ds.variants[0]
    : name === "top_k_agreement" ? "top-20% overlap w/ " + ds.variants[0] : METRIC_LABELS[name] || name);
  const S = {
    ds: null, view: "browse", variant: null, method: null, example: null, cls: "all",
    outcome: "all", gridPage: 0, opacity: 0.65, absolute: false, sortKey: "index", sortDir: 1,
    pages: {},
  };
  const $ = (id) => document.getElementById(id);
  let REDRAW = [];  // heatmaps of the current view, redrawn when the opacity changes

  // ---------------------------------------------------------------- DOM helpers (text only)
  function h(tag, attrs, ...children) {
    const svg = ["svg", "g", "rect", "line", "polyline", "text", "circle"].includes(tag);
    const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
      : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (/^on/i.test(k)) throw new Error("no inline handlers");
      el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toPrecision(digits || 4);
  }
  function select(id, options, value, label, onChange) {
    const s = h("select", { id: id },
      options.map(([v, text]) => h("option", { value: v, selected: v === value ? "" : null }, text)));
    s.addEventListener("change", (e) => onChange(e.target.value));
    return h("span", {}, h("label", { for: id }, label), s);
  }

  // ---------------------------------------------------------------- data
  function decode(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  function decodePage(raw) {
    const page = { start: raw.start, stop: raw.stop, inputs: decode(raw.inputs),
      raw: raw.raw ? decode(raw.raw) : null, attributions: {}, curves: {} };
    for (const [v, byMethod] of Object.entries(raw.attributions)) {
      page.attributions[v] = {};
      for (const [m, b64] of Object.entries(byMethod)) page.attributions[v][m] = decode(b64);
    }
    for (const [v, byMethod] of Object.entries(raw.curves)) {
      page.curves[v] = {};
      for (const [m, c] of Object.entries(byMethod)) {
        const out = { fractions: c.fractions };
        for (const [k, b64] of Object.entries(c)) if (k !== "fractions") out[k] = decode(b64);
        page.curves[v][m] = out;
      }
    }
    return page;
  }
  function loadPage(ds, k) {
    const key = ds.id + "-" + k;
    if (!S.pages[key]) {
      if (MODE === "server") {
        S.pages[key] = fetch("api/page?dataset=" + encodeURIComponent(ds.id) + "&page=" + k)
          .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
          .then(decodePage);
      } else {
        const node = document.getElementById("px-page-" + key);
        S.pages[key] = Promise.resolve(decodePage(JSON.parse(node.textContent)));
      }
    }
    return S.pages[key];
  }
  function nFeatures(ds) { return ds.shape.reduce((a, b) => a * b, 1); }
  async function example(ds, i) {
    const page = await loadPage(ds, Math.floor(i / ds.page_size));
    const F = nFeatures(ds), o = (i - page.start) * F;
    const slice = (arr) => arr.subarray(o, o + F);
    return {
      index: i, input: slice(page.inputs), raw: page.raw ? slice(page.raw) : null,
      attr: (v, m) => (page.attributions[v] && page.attributions[v][m]
        ? slice(page.attributions[v][m]) : null),
      curve: (v, m) => {
        const c = page.curves[v] && page.curves[v][m];
        if (!c) return null;
        const P = c.fractions.length, out = { fractions: c.fractions };
        for (const k of Object.keys(c)) {
          if (k !== "fractions") out[k] = c[k].subarray((i - page.start) * P, (i - page.start + 1) * P);
        }
        return out;
      },
    };
  }
  const className = (ds, c) => (c === null || c === undefined ? "?" : (ds.class_names[c] ?? String(c)));
  const featureName = (ds, j) => ds.feature_names[j] ?? ("x" + j);
  const labels = (ds) => ds.labels;
  const preds = (ds, v) => ds.predictions[v] || null;
  function isCorrect(ds, v, i) {
    const p = preds(ds, v), y = labels(ds);
    return p && y ? p[i] === y[i] : null;
  }
  const available = (ds, v, m) => ds.available.some(([a, b]) => a === v && b === m);
  const metricOf = (ds, v, m, name, i) => {
    const t = ds.metrics[v] && ds.metrics[v][m] && ds.metrics[v][m][name];
    return t ? t[i] : null;
  };

  // ---------------------------------------------------------------- colour and drawing
  function colour(t, absolute) {  // t in [-1, 1] -> [r, g, b]: red positive, blue negative
    if (absolute) t = Math.abs(t);
    const a = Math.min(1, Math.abs(t));
    return t >= 0 ? [255, Math.round(255 * (1 - a)), Math.round(255 * (1 - a))]
      : [Math.round(255 * (1 - a)), Math.round(255 * (1 - a)), 255];
  }
  function geometry(ds) {
    const s = ds.shape;
    if (ds.kind === "image") return { c: s[0], hgt: s[1], wid: s[2] };
    if (s.length === 2) return { c: 1, hgt: s[0], wid: s[1] };
    return { c: 1, hgt: 1, wid: s[0] };
  }
  function pixels(ds, values) {  // (C,H,W) -> H*W: channel sum
    const g = geometry(ds), n = g.hgt * g.wid, out = new Float64Array(n);
    for (let c = 0; c < g.c; c++) for (let p = 0; p < n; p++) out[p] += values[c * n + p];
    return out;
  }
  function grey(ds, input) {
    const g = geometry(ds), n = g.hgt * g.wid, base = pixels(ds, input);
    let lo = Infinity, hi = -Infinity;
    for (const v of base) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const out = new Float64Array(n);
    for (let p = 0; p < n; p++) out[p] = hi > lo ? (base[p] - lo) / (hi - lo) : 0.5;
    return out;
  }
  function drawMap(canvas, ds, input, attr, scale) {
    const g = geometry(ds), n = g.hgt * g.wid;
    const img = new ImageData(g.wid, g.hgt), base = grey(ds, input);
    const heat = attr ? pixels(ds, attr) : null;
    for (let p = 0; p < n; p++) {
      const b = 255 * base[p];
      let rgb = [b, b, b];
      if (heat && scale > 0) {
        const t = heat[p] / scale, col = colour(t, S.absolute);
        const alpha = S.opacity * Math.sqrt(Math.min(1, Math.abs(t)));
        rgb = rgb.map((v, k) => (1 - alpha) * v + alpha * col[k]);
      }
      img.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * p);
    }
    const off = document.createElement("canvas");
    off.width = g.wid; off.height = g.hgt;
    off.getContext("2d").putImageData(img, 0, 0);
    const zoom = Math.max(1, Math.floor(192 / Math.max(g.wid, g.hgt)));
    canvas.width = g.wid * zoom; canvas.height = g.hgt * zoom;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  }
  function maxAbs(values) {
    let m = 0;
    for (const v of values) m = Math.max(m, Math.abs(v));
    return m;
  }
  function legend() {
    const c = h("canvas", { width: 160, height: 12 });
    const ctx = c.getContext("2d");
    for (let x = 0; x < 160; x++) {
      const t = S.absolute ? x / 159 : 2 * x / 159 - 1, [r, g, b] = colour(t, S.absolute);
      ctx.fillStyle = "rgb(" + r + "," + g + "," + b + ")";
      ctx.fillRect(x, 0, 1, 12);
    }
    return h("span", { class: "legend" }, S.absolute ? "0" : "−max", c,
      S.absolute ? "max |attribution|" : "+max (one colour map for every method)");
  }

  // ---------------------------------------------------------------- tooltip
  function tip(ev, rows) {
    const t = $("px-tip");
    clear(t);
    for (const [label, value, key] of rows) {
      t.appendChild(h("span", key ? { ["data-" + key]: String(value) } : {},
        label + ": " + (typeof value === "number" ? fmt(value, 6) : value)));
    }
    t.style.display = "block";
    t.style.left = (ev.clientX + 14) + "px";
    t.style.top = (ev.clientY + 14) + "px";
  }
  function hideTip() { $("px-tip").style.display = "none"; }
  function hoverMap(canvas, ds, ex, attr) {
    const g = geometry(ds), heat = pixels(ds, attr), n = g.hgt * g.wid;
    canvas.addEventListener("mousemove", (ev) => {
      const r = canvas.getBoundingClientRect();
      const col = Math.min(g.wid - 1, Math.floor((ev.clientX - r.left) / r.width * g.wid));
      const row = Math.min(g.hgt - 1, Math.floor((ev.clientY - r.top) / r.height * g.hgt));
      const p = row * g.wid + col;
      const input = g.c === 1 ? ex.input[p] : pixels(ds, ex.input)[p] / g.c;
      tip(ev, [
        ["pixel", "(" + row + ", " + col + ")", "pixel"],
        [g.c === 1 ? "attribution" : "attribution (channel sum)", heat[p], "attr"],
        [g.c === 1 ? "input" : "input (channel mean)", input, "input"],
      ]);
    });
    canvas.addEventListener("mouseleave", hideTip);
    return n;
  }
  function bars(ds, ex, attr, topK) {
    const F = attr.length, order = Array.from({ length: F }, (_, j) => j);
    order.sort((a, b) => Math.abs(attr[b]) - Math.abs(attr[a]));
    const rows = order.slice(0, topK), scale = maxAbs(attr) || 1, W = 300, rowH = 17, mid = 190;
    const svg = h("svg", { width: W, height: rows.length * rowH + 4, class: "bars" });
    rows.forEach((j, k) => {
      const v = attr[j], len = Math.abs(v) / scale * (W - mid - 4) * (S.absolute ? 1 : 0.5);
      const x0 = S.absolute ? mid : mid + (W - mid) / 2;
      const [r, g, b] = colour(v / scale, S.absolute);
      const row = h("g", { "data-feature": j, transform: "translate(0," + (k * rowH) + ")" },
        h("rect", { class: "hit", x: 0, y: 0, width: W, height: rowH, fill: "#fff", "fill-opacity": 0 }),
        h("text", { x: mid - 6, y: 12, "text-anchor": "end", "font-size": 11 },
          featureName(ds, j).slice(0, 32)),
        h("rect", { x: S.absolute || v >= 0 ? x0 : x0 - len, y: 2, width: Math.max(len, 1),
          height: rowH - 5, fill: "rgb(" + r + "," + g + "," + b + ")", stroke: "#889" }));
      row.addEventListener("mousemove", (ev) => tip(ev, [
        ["feature", featureName(ds, j), "feature"], ["attribution", attr[j], "attr"],
        ["input", ex.input[j], "input"], ...(ex.raw ? [["raw value", ex.raw[j], "raw"]] : []),
      ]));
      row.addEventListener("mouseleave", hideTip);
      svg.appendChild(row);
    });
    return svg;
  }
  function explanationView(ds, ex, attr, options) {
    if (ds.kind === "tabular") return bars(ds, ex, attr, options.topK || 12);
    const c = h("canvas", { class: "heat", "data-method": options.method,
      "data-variant": options.variant });
    const scale = maxAbs(attr), redraw = () => drawMap(c, ds, ex.input, attr, scale);
    redraw();
    REDRAW.push(redraw);
    hoverMap(c, ds, ex, attr);
    return c;
  }
  function metricsList(ds, v, m, i) {
    return h("dl", { class: "metrics" }, ds.metric_names.flatMap((name) => {
      const value = metricOf(ds, v, m, name, i);
      return value === null || value === undefined ? []
        : [h("dt", {}, metricLabel(ds, name)), h("dd", { "data-metric": name }, fmt(value))];
    }));
  }
  function caption(ds, i, v) {
    const y = labels(ds), p = preds(ds, v), ok = isCorrect(ds, v, i);
    return [
      "#" + i, y ? " · label " + className(ds, y[i]) : "",
      p ? " · predicted " + className(ds, p[i]) : "",
      ok === null ? "" : h("span", { class: ok ? "ok" : "bad" }, ok ? " ✓" : " ✗"),
    ];
  }

  // ---------------------------------------------------------------- views
  function filtered(ds) {
    const out = [], y = labels(ds), p = preds(ds, S.variant);
    const cls = (i) => (y ? y[i] : p ? p[i] : null);
    for (let i = 0; i < ds.n; i++) {
      if (S.cls !== "all" && String(cls(i)) !== S.cls) continue;
      const ok = isCorrect(ds, S.variant, i);
      if (S.outcome === "correct" && ok !== true) continue;
      if (S.outcome === "wrong" && ok !== false) continue;
      out.push(i);
    }
    return out;
  }
  async function browse(root) {
    const ds = S.ds, y = labels(ds) || preds(ds, S.variant) || [];
    const classes = Array.from(new Set(y)).sort((a, b) => a - b);
    const controls = h("div", { class: "controls" },
      select("px-class", [["all", "all classes"], ...classes.map((c) => [String(c), className(ds, c)])],
        S.cls, "class", (v) => { S.cls = v; S.gridPage = 0; render(); }),
      select("px-outcome", [["all", "all"], ["correct", "correct"], ["wrong", "wrong"]], S.outcome,
        "outcome (" + S.variant + ")", (v) => { S.outcome = v; S.gridPage = 0; render(); }),
      variantSelect());
    root.appendChild(controls);
    const items = filtered(ds), per = ds.page_size, pages = Math.max(1, Math.ceil(items.length / per));
    S.gridPage = Math.min(S.gridPage, pages - 1);
    const shown = items.slice(S.gridPage * per, (S.gridPage + 1) * per);
    const prev = h("button", { id: "px-prev", disabled: S.gridPage === 0 ? "" : null }, "‹ previous");
    const next = h("button", { id: "px-next", disabled: S.gridPage >= pages - 1 ? "" : null }, "next ›");
    prev.addEventListener("click", () => { S.gridPage--; render(); });
    next.addEventListener("click", () => { S.gridPage++; render(); });
    root.appendChild(h("div", { class: "controls pager" }, prev,
      "page " + (S.gridPage + 1) + " of " + pages + " · " + items.length + " examples", next));
    const grid = h("div", { class: "grid", id: "px-grid" });
    root.appendChild(grid);
    if (!shown.length) grid.appendChild(h("div", { class: "empty" }, "No example matches."));
    for (const i of shown) {
      const ex = await example(ds, i);
      let body;
      if (ds.kind === "tabular") {
        body = h("table", { class: "feat" }, Array.from(ex.input).slice(0, 6).map((v, j) =>
          h("tr", {}, h("td", {}, featureName(ds, j)), h("td", { class: "v" }, fmt(ex.raw ? ex.raw[j] : v)))));
      } else {
        body = h("canvas", {});
        drawMap(body, ds, ex.input, null, 0);
      }
      const card = h("div", { class: "card", "data-index": i }, body,
        h("div", { class: "cap" }, caption(ds, i, S.variant)));
      card.addEventListener("click", () => openExample(i));
      grid.appendChild(card);
    }
  }
  function variantSelect() {
    return select("px-variant", S.ds.variants.map((v) => [v, v]), S.variant, "variant",
      (v) => { S.variant = v; render(); });
  }
  function methodSelect() {
    return select("px-method", S.ds.methods.map((m) => [m, m]), S.method, "method",
      (m) => { S.method = m; render(); });
  }
  function displayControls() {
    const slider = h("input", { type: "range", id: "px-opacity", min: 0, max: 1, step: 0.05,
      value: S.opacity });
    slider.addEventListener("input", (e) => {
      S.opacity = Number(e.target.value);
      for (const f of REDRAW) f();
    });
    const abs = h("input", { type: "checkbox", id: "px-absolute", checked: S.absolute ? "" : null });
    abs.addEventListener("change", (e) => { S.absolute = e.target.checked; render(); });
    return [
      S.ds.kind === "tabular" ? null : h("span", {}, h("label", { for: "px-opacity" }, "opacity"), slider),
      h("span", {}, abs, h("label", { for: "px-absolute" }, "absolute values")), legend(),
    ];
  }
  function exampleNav() {
    const prev = h("button", { id: "px-ex-prev" }, "‹"), next = h("button", { id: "px-ex-next" }, "›");
    prev.addEventListener("click", () => openExample(Math.max(0, S.example - 1)));
    next.addEventListener("click", () => openExample(Math.min(S.ds.n - 1, S.example + 1)));
    return h("span", { class: "pager" }, prev, " ", next);
  }
  async function exampleView(root) {
    const ds = S.ds, i = S.example ?? 0, ex = await example(ds, i);
    root.appendChild(h("div", { class: "controls" }, exampleNav(),
      h("strong", { id: "px-example-title" }, caption(ds, i, S.variant)), variantSelect(), ...displayControls()));
    const panels = h("div", { class: "panels", id: "px-methods" });
    for (const m of ds.methods) {
      const attr = ex.attr(S.variant, m);
      if (!attr) continue;
      const panel = h("div", { class: "panel" + (m === S.method ? " selected" : ""), "data-method": m },
        h("div", {}, h("h3", {}, m), explanationView(ds, ex, attr, { method: m, variant: S.variant }),
          h("div", { class: "scale" }, "max |attribution| " + fmt(maxAbs(attr)))),
        metricsList(ds, S.variant, m, i));
      panel.addEventListener("click", () => { S.method = m; render(); });
      panels.appendChild(panel);
    }
    if (!panels.childNodes.length) panels.appendChild(h("div", { class: "empty" }, "No method on this variant."));
    root.appendChild(panels);
    root.appendChild(curveView(ds, ex));
  }
  function curveView(ds, ex) {
    const box = h("div", { class: "curve", id: "px-curve" },
      h("h3", {}, "Deletion / insertion: " + S.method + " on " + S.variant + ", example #" + ex.index));
    const c = ex.curve(S.variant, S.method);
    if (!c) { box.appendChild(h("div", { class: "empty" }, "No curve saved for this method and variant.")); return box; }
    const W = 520, H = 220, L = 44, B = 28, series = [["deletion", "#b3261e"], ["insertion", "#2456a6"]];
    let hi = 0;
    for (const [k] of series) if (c[k]) for (const v of c[k]) hi = Math.max(hi, v);
    hi = hi > 0 ? hi : 1;
    const X = (f) => L + f * (W - L - 10), Y = (v) => H - B - v / hi * (H - B - 10);
    const svg = h("svg", { width: W, height: H, id: "px-curve-svg" },
      h("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#889" }),
      h("line", { x1: L, y1: 10, x2: L, y2: H - B, stroke: "#889" }),
      h("text", { x: W / 2, y: H - 6, "text-anchor": "middle", "font-size": 11 }, "fraction of features removed / inserted"),
      h("text", { x: L - 4, y: 16, "text-anchor": "end", "font-size": 10 }, fmt(hi, 3)),
      h("text", { x: L - 4, y: H - B, "text-anchor": "end", "font-size": 10 }, "0"));
    for (const [k, colr] of series) {
      if (!c[k]) continue;
      const pts = Array.from(c[k]).map((v, j) => X(c.fractions[j]) + "," + Y(v)).join(" ");
      svg.appendChild(h("polyline", { points: pts, fill: "none", stroke: colr, "stroke-width": 2, "data-curve": k }));
    }
    svg.addEventListener("mousemove", (ev) => {
      const r = svg.getBoundingClientRect(), f = (ev.clientX - r.left - L) / (W - L - 10);
      let j = 0;
      c.fractions.forEach((x, k) => { if (Math.abs(x - f) < Math.abs(c.fractions[j] - f)) j = k; });
      tip(ev, [["fraction", c.fractions[j], "fraction"],
        ...series.filter(([k]) => c[k]).map(([k]) => [k + " score", c[k][j], k])]);
    });
    svg.addEventListener("mouseleave", hideTip);
    box.appendChild(svg);
    box.appendChild(h("div", { class: "legend" }, h("span", { style: "color:#b3261e" }, "— deletion"),
      h("span", { style: "color:#2456a6" }, "— insertion"),
      "AUC " + fmt(metricOf(ds, S.variant, S.method, "deletion_auc", ex.index)) + " / " +
      fmt(metricOf(ds, S.variant, S.method, "insertion_auc", ex.index))));
    return box;
  }
  async function variantsView(root) {
    const ds = S.ds, i = S.example ?? 0, ex = await example(ds, i);
    root.appendChild(h("div", { class: "controls" }, exampleNav(),
      h("strong", {}, caption(ds, i, ds.variants[0])), methodSelect(), ...displayControls()));
    const panels = h("div", { class: "panels", id: "px-variants" });
    for (const v of ds.variants) {
      const attr = ex.attr(v, S.method);
      if (!attr) continue;
      const agree = metricOf(ds, v, S.method, "agreement", i);
      const topk = metricOf(ds, v, S.method, "top_k_agreement", i);
      const panel = h("div", { class: "panel", "data-variant": v },
        h("div", {}, h("h3", {}, v), explanationView(ds, ex, attr, { method: S.method, variant: v }),
          h("div", { class: "cap" }, caption(ds, i, v))),
        h("dl", { class: "metrics" },
          h("dt", {}, "agreement (ρ) with " + ds.variants[0]),
          h("dd", { "data-metric": "agreement" }, v === ds.variants[0] ? "1 (reference)" : fmt(agree)),
          topk === null || topk === undefined ? null : [h("dt", {}, "top-20% overlap"), h("dd", {}, fmt(topk))],
          h("dt", {}, "deletion AUC ↓"), h("dd", {}, fmt(metricOf(ds, v, S.method, "deletion_auc", i)))));
      panel.addEventListener("click", () => { S.variant = v; S.view = "example"; render(); });
      panels.appendChild(panel);
    }
    if (!panels.childNodes.length) panels.appendChild(h("div", { class: "empty" }, "No variant has this method."));
    root.appendChild(panels);
  }
  function metricsView(root) {
    const ds = S.ds, v = S.variant, m = S.method, y = labels(ds), p = preds(ds, v);
    root.appendChild(h("div", { class: "controls" }, variantSelect(), methodSelect(),
      "click a column to sort, a row to open the example"));
    const cols = [["index", "#"], ["label", "label"], ["prediction", "predicted"], ["correct", "correct"],
      ...ds.metric_names.map((n) => [n, metricLabel(ds, n)])];
    const value = (i, k) => {
      if (k === "index") return i;
      if (k === "label") return y ? y[i] : null;
      if (k === "prediction") return p ? p[i] : null;
      if (k === "correct") { const ok = isCorrect(ds, v, i); return ok === null ? null : ok ? 1 : 0; }
      return metricOf(ds, v, m, k, i);
    };
    const rows = filtered(ds).sort((a, b) => {
      const va = value(a, S.sortKey), vb = value(b, S.sortKey);
      if (va === null || va === undefined) return 1;
      if (vb === null || vb === undefined) return -1;
      return S.sortDir * (va - vb) || a - b;
    });
    const head = h("tr", {}, cols.map(([k, text]) => {
      const th = h("th", { "data-key": k }, text + (S.sortKey === k ? (S.sortDir > 0 ? " ▲" : " ▼") : ""));
      th.addEventListener("click", () => {
        S.sortDir = S.sortKey === k ? -S.sortDir : 1; S.sortKey = k; render();
      });
      return th;
    }));
    const body = h("tbody", {}, rows.map((i) => {
      const tr = h("tr", { "data-index": i }, cols.map(([k]) => {
        const val = value(i, k);
        if (k === "label" || k === "prediction") return h("td", {}, val === null ? "–" : className(ds, val));
        if (k === "correct") return h("td", {}, val === null ? "–" : val ? "✓" : "✗");
        return h("td", {}, k === "index" ? String(val) : fmt(val));
      }));
      tr.addEventListener("click", () => openExample(i));
      return tr;
    }));
    root.appendChild(h("table", { class: "metrics", id: "px-table" }, h("thead", {}, head), body));
  }

  // ---------------------------------------------------------------- navigation
  function openExample(i) { S.example = i; S.view = "example"; render(); }
  function setDataset(index) {
    S.ds = MANIFEST.datasets[index];
    S.variant = S.ds.variants[0] || null;
    S.method = S.ds.methods[0] || null;
    S.example = 0; S.cls = "all"; S.outcome = "all"; S.gridPage = 0;
  }
  let rendering = Promise.resolve();
  function render() {
    rendering = rendering.then(draw).catch((err) => {
      clear($("px-main")).appendChild(h("div", { class: "empty" }, "Could not draw: " + err.message));
    });
    return rendering;
  }
  async function draw() {
    hideTip();
    for (const b of document.querySelectorAll("nav button")) {
      b.classList.toggle("active", b.getAttribute("data-view") === S.view);
    }
    REDRAW = [];
    const root = h("div", { id: "px-view", "data-view": S.view });
    if (!S.ds) root.appendChild(h("div", { class: "empty" }, "No examples found in this folder."));
    else if (S.view === "browse") await browse(root);
    else if (S.view === "example") await exampleView(root);
    else if (S.view === "variants") await variantsView(root);
    else metricsView(root);
    clear($("px-main")).appendChild(root);
    const ds = S.ds;
    $("px-footer").textContent = ds ? "source: " + ds.source.join(", ") : "";
    document.body.setAttribute("data-ready", "1");
  }
  function init() {
    const pick = $("px-dataset");
    MANIFEST.datasets.forEach((ds, k) => pick.appendChild(h("option", { value: k }, ds.title)));
    pick.addEventListener("change", (e) => { setDataset(Number(e.target.value)); render(); });
    for (const b of document.querySelectorAll("nav button")) {
      b.addEventListener("click", () => { S.view = b.getAttribute("data-view"); render(); });
    }
    $("px-title").textContent = MANIFEST.title;
    if (MANIFEST.datasets.length) setDataset(0);
    render();
  }
  window.pellucidExplorer = { state: S, render: render, ready: () => rendering };
  init();
})();
