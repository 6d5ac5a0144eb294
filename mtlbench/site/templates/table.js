// Sortable and filterable tables, for pages opened from disk: no libraries, nothing remote.
// A <th> click sorts its column (numbers by the cell's data-v, else by text; missing values
// last); a <form class="filters" data-table="ID"> hides the rows whose data-<name> differs
// from a chosen <select name="..."> value or whose data-search lacks the typed text.
// A run page embeds its result file (<script type="application/json" id="run-result">); the
// script draws from it everything below the metrics: selection, line charts, conflict
// statistics, the per-layer table and the per-layer series as heatmaps (decoded from their
// packed columnar arrays: little-endian, base64), the mitigation's report, cost, configuration
// and provenance. Every string from the file is escaped.
(function () {
  "use strict";
  var PALETTE = ["#2457c5", "#d9730d", "#137333", "#a50e0e", "#7b3fb5", "#8c6d1f", "#00838f", "#c2185b", "#455a64", "#6d8f00"];
  renderRun();
  function sortKey(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) return cell.textContent.trim().toLowerCase();
    return v === "" ? null : parseFloat(v);
  }
  function compare(a, b, asc) {
    if (a === null) return b === null ? 0 : 1;
    if (b === null) return -1;
    if (a < b) return asc ? -1 : 1;
    if (a > b) return asc ? 1 : -1;
    return 0;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      function sort() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
          return { row: row, key: sortKey(row.cells[col]), i: i };
        });
        rows.sort(function (x, y) { return compare(x.key, y.key, asc) || x.i - y.i; });
        rows.forEach(function (x) { body.appendChild(x.row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
    });
  });
  document.querySelectorAll("form.filters").forEach(function (form) {
    var table = document.getElementById(form.getAttribute("data-table"));
    var count = form.querySelector(".count");
    function apply() {
      var rows = table.tBodies[0].rows, shown = 0;
      var selects = form.querySelectorAll("select");
      var search = form.querySelector("input[type=search]");
      var text = search ? search.value.trim().toLowerCase() : "";
      Array.prototype.forEach.call(rows, function (row) {
        var keep = true;
        selects.forEach(function (s) {
          if (s.value !== "" && row.getAttribute("data-" + s.name) !== s.value) keep = false;
        });
        if (text && (row.getAttribute("data-search") || "").indexOf(text) < 0) keep = false;
        row.hidden = !keep;
        if (keep) shown += 1;
      });
      if (count) count.textContent = shown + " of " + rows.length + " rows shown";
    }
    form.addEventListener("input", apply);
    form.addEventListener("change", apply);
    form.addEventListener("submit", function (e) { e.preventDefault(); });
    apply();
  });
  function decode(block) {
    var raw = atob(block.base64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var view = new DataView(bytes.buffer), n = block.shape[0] * (block.shape[1] || 1), out = new Array(n);
    var get = { float32: function (k) { return view.getFloat32(4 * k, true); },
                uint8: function (k) { return view.getUint8(k); },
                uint16: function (k) { return view.getUint16(2 * k, true); } }[block.dtype];
    for (var k = 0; k < n; k++) out[k] = get(k);
    return out;
  }
  function esc(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function color(v, signed) {  // signed: cosine in [-1, 1], red below 0, blue above; else a share in [0, 1], red
    if (v !== v) return "#eeeeee";
    var t = Math.min(1, Math.abs(v)), r = 255, g = Math.round(255 - 200 * t), b = Math.round(255 - 200 * t);
    if (signed && v > 0) { r = Math.round(255 - 200 * t); g = Math.round(255 - 130 * t); b = 255; }
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  function heatmap(d, target) {  // an inline <svg> written as markup: the parser gives it the SVG namespace
    var value = target.getAttribute("data-value") || "mean_cos", label = target.getAttribute("data-label") || value;
    var block = d[value], rows = block.shape[0], cols = block.shape[1] || 0;
    var values = decode(block), signed = value === "mean_cos";
    if (!signed) values = values.map(function (c) { return c / d.pairs; });
    var cw = Math.max(2, Math.min(8, Math.floor(700 / Math.max(rows, 1)))), ch = 12, left = 170, top = 22;
    var w = left + rows * cw + 10, h = top + cols * ch + 34, y = top + cols * ch + 14, steps = d.steps || [];
    var out = ['<svg class="chart heatmap" width="' + w + '" height="' + h + '" role="img" aria-label="' + esc(label) + '">',
               '<text x="' + left + '" y="14" class="t">' + esc(label) + "</text>"];
    for (var j = 0; j < cols; j++) {
      var name = esc(d.layers[j] || ("layer " + (j + 1)));
      out.push("<g><title>" + name + '</title><text x="' + (left - 6) + '" y="' + (top + j * ch + 9) + '" text-anchor="end">' + name + "</text>");
      for (var i = 0; i < rows; i++) {
        out.push('<rect x="' + (left + i * cw) + '" y="' + (top + j * ch) + '" width="' + cw + '" height="' + (ch - 1) +
                 '" fill="' + color(values[i * cols + j], signed) + '"/>');
      }
      out.push("</g>");
    }
    out.push('<text x="' + left + '" y="' + y + '">step ' + esc(steps.length ? steps[0] : 0) + "</text>",
             '<text x="' + (left + rows * cw) + '" y="' + y + '" text-anchor="end">step ' +
             esc(steps.length ? steps[steps.length - 1] : rows) + "</text>",
             '<text x="' + (left + rows * cw / 2) + '" y="' + (y + 14) + '" text-anchor="middle">training step (one column per sample)</text>',
             "</svg>");
    target.innerHTML = out.join("");
    target.setAttribute("data-drawn", String(rows * cols));
  }
  function ticks(lo, hi, n) {  // about n round values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]
    if (hi <= lo) { lo -= 0.5; hi += 0.5; }
    var raw = (hi - lo) / (n - 1), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).filter(function (s) { return s >= raw; })[0];
    var first = Math.floor(lo / step + 1e-9) * step, last = Math.ceil(hi / step - 1e-9) * step, out = [];
    for (var i = 0; i <= Math.round((last - first) / step); i++) out.push(Number((first + i * step).toPrecision(12)));
    return out;
  }
  function tickLabel(v) {
    return Math.abs(v) >= 1e-3 || v === 0 ? String(Number(v.toPrecision(6))) : v.toExponential(1);
  }
  function lineChart(c) {
    var width = 440, height = 230, left = 52, right = 12, top = 24, bottom = 40;
    var lines = c.lines.map(function (l) {
      var pts = [];
      for (var i = 0; i < Math.min(l[1].length, l[2].length); i++) {
        if (l[1][i] !== null && l[2][i] !== null) pts.push([l[1][i], l[2][i]]);
      }
      return [l[0], pts];
    });
    var all = [].concat.apply([], lines.map(function (l) { return l[1]; }));
    var legendH = 16 * Math.floor((lines.length + 2) / 3), total = height + legendH;
    var out = ['<svg class="chart" viewBox="0 0 ' + width + " " + total + '" width="' + width + '" height="' + total +
               '" role="img" aria-label="' + esc(c.title) + '">', '<text x="' + left + '" y="15" class="t">' + esc(c.title) + "</text>"];
    if (!all.length) {
      out.push('<text x="' + width / 2 + '" y="' + height / 2 + '" text-anchor="middle" class="m">no data</text></svg>');
      return out.join("");
    }
    var xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    if (c.hline !== null && c.hline !== undefined) ys.push(c.hline);
    var xt = ticks(Math.min.apply(null, xs), Math.max.apply(null, xs), 5), yt = ticks(Math.min.apply(null, ys), Math.max.apply(null, ys), 5);
    var pw = width - left - right, ph = height - top - bottom;
    function sx(x) { return (left + pw * (x - xt[0]) / (xt[xt.length - 1] - xt[0])).toFixed(1); }
    function sy(y) { return (top + ph * (1 - (y - yt[0]) / (yt[yt.length - 1] - yt[0]))).toFixed(1); }
    out.push('<rect x="' + left + '" y="' + top + '" width="' + pw + '" height="' + ph + '" class="f"/>');
    yt.forEach(function (t) {
      out.push('<line x1="' + left + '" x2="' + (left + pw) + '" y1="' + sy(t) + '" y2="' + sy(t) + '" class="g"/>' +
               '<text x="' + (left - 4) + '" y="' + (Number(sy(t)) + 4).toFixed(1) + '" text-anchor="end">' + tickLabel(t) + "</text>");
    });
    xt.forEach(function (t) {
      out.push('<text x="' + sx(t) + '" y="' + (top + ph + 14) + '" text-anchor="middle">' + tickLabel(t) + "</text>");
    });
    if (c.hline !== null && c.hline !== undefined) {
      out.push('<line x1="' + left + '" x2="' + (left + pw) + '" y1="' + sy(c.hline) + '" y2="' + sy(c.hline) + '" class="z"/>');
    }
    out.push('<text x="' + (left + pw / 2) + '" y="' + (top + ph + 30) + '" text-anchor="middle">' + esc(c.xlabel) + "</text>");
    lines.forEach(function (l, i) {
      var color = PALETTE[i % PALETTE.length], pts = l[1];
      out.push('<polyline points="' + pts.map(function (p) { return sx(p[0]) + "," + sy(p[1]); }).join(" ") +
               '" fill="none" stroke="' + color + '" stroke-width="1.6"/>');
      if (pts.length <= 60) {
        pts.forEach(function (p) { out.push('<circle cx="' + sx(p[0]) + '" cy="' + sy(p[1]) + '" r="2.2" fill="' + color + '"/>'); });
      }
      var lx = (left + (i % 3) * (pw / 3)).toFixed(1), ly = height + 4 + 16 * Math.floor(i / 3);
      out.push('<rect x="' + lx + '" y="' + ly + '" width="12" height="3" fill="' + color + '"/>' +
               '<text x="' + (Number(lx) + 16).toFixed(1) + '" y="' + (ly + 5) + '">' + esc(l[0]) + "</text>");
    });
    out.push("</svg>");
    return out.join("");
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && v !== v)) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 4 : digits);
    if (typeof v === "boolean") return v ? "True" : "False";
    return String(v);
  }
  function thousands(v) {
    return typeof v === "number" && isFinite(v) ? Math.trunc(v).toLocaleString("en-US") : "–";
  }
  function sortValue(v) { return typeof v === "number" && isFinite(v) ? String(v) : ""; }
  function plain(v) { return v === null || typeof v !== "object"; }
  function flatten(d, prefix, out) {  // nested objects as dotted keys; a list of plain values as one value
    out = out || [];
    if (Array.isArray(d) && d.every(plain)) { out.push([prefix, d.map(function (v) { return v === null ? "None" : String(v); }).join(", ")]); return out; }
    if (d === null || typeof d !== "object" || Array.isArray(d)) { out.push([prefix, d]); return out; }
    Object.keys(d).forEach(function (k) { flatten(d[k], prefix ? prefix + "." + k : k, out); });
    return out;
  }
  function kv(id, pairs, digits, prefix) {
    var el = document.getElementById(id);
    if (!el) return;
    el.innerHTML = pairs.map(function (p) {
      return "<dt>" + esc((prefix || "") + p[0]) + "</dt><dd>" + esc(digits === undefined ? text(p[1]) : fmt(p[1], digits)) + "</dd>";
    }).join("");
  }
  function text(v) { return v === null || v === undefined ? "None" : typeof v === "number" ? String(v) : fmt(v); }
  function chartSpecs(r) {  // the run's line charts: training loss, validation metrics, pair cosines, p%
    var specs = [], curves = r.curves || {}, loss = [], val = [], c = r.conflict || {};
    Object.keys(curves).forEach(function (model) {
      var epochs = curves[model] || [], xs = epochs.map(function (e) { return e.epoch; });
      if (!epochs.length) return;
      Object.keys(epochs[0].train_loss || {}).forEach(function (t) {
        loss.push([model === "joint" || model === t ? t : model + ": " + t, xs, epochs.map(function (e) { return (e.train_loss || {})[t]; })]);
      });
      Object.keys(epochs[0].val || {}).forEach(function (k) {
        val = val.filter(function (l) { return l[0] !== k; });
        val.push([k, xs, epochs.map(function (e) { return (e.val || {})[k]; })]);
      });
    });
    if (loss.length) specs.push({ title: "training loss per sub-task", xlabel: "epoch", hline: null, lines: loss });
    if (val.length) specs.push({ title: "validation metrics", xlabel: "epoch", hline: null, lines: val });
    var series = c.series || {}, steps = series.step || [], pairCos = series.pair_cos || [];
    var pairs = (c.pairs || []).map(function (p) { return p.join(" · "); });
    if (steps.length && pairCos.length) {
      var lines;
      if (pairs.length <= 6) {
        lines = pairs.map(function (name, i) { return [name, steps, pairCos.map(function (row) { return i < row.length ? row[i] : null; })]; });
      } else {
        lines = [["mean over pairs", steps, pairCos.map(function (row) { return row.length ? row.reduce(function (a, b) { return a + b; }, 0) / row.length : null; })],
                 ["min over pairs", steps, pairCos.map(function (row) { return row.length ? Math.min.apply(null, row) : null; })]];
      }
      specs.push({ title: "cosine between task gradients (cos < 0: conflict)", xlabel: "training step", hline: 0, lines: lines });
      if (pairs.length > 1) specs.push({ title: "p% conflict at each sampled step", xlabel: "training step", hline: null, lines: [["p%", steps, series.p_pct || []]] });
    }
    specs.forEach(function (spec) {
      spec.lines.forEach(function (l) { l[2] = l[2].map(function (v) { return typeof v === "number" && isFinite(v) ? v : null; }); });
    });
    return specs;
  }
  function conflictHtml(c) {
    var out = ["<h2>Gradient conflict</h2>"], ci = c.p_pct_ci95;
    out.push("<p>p% = <strong>" + esc(fmt(c.p_pct, 1)) + "</strong>" + (ci ? " (95% interval " + esc(fmt(ci[0], 1)) + "–" + esc(fmt(ci[1], 1)) + ")" : "") +
             " (share of task pairs with cos &lt; 0, mean over " + esc(fmt(c.n_samples)) + " samples taken every " + esc(fmt(c.every)) +
             " steps), mean cosine " + esc(fmt(c.mean_cos, 3)) + (c.parameters ? "; on " + esc(c.parameters) : "") + ".</p>");
    var ref = c.reference;
    if (ref && typeof ref === "object") {
      var rci = ref.p_pct_ci95;
      out.push("<p>On the reference set (" + esc(text(ref.set)) + "; " + esc(thousands(ref.params)) + " parameters): p% = <strong>" + esc(fmt(ref.p_pct, 1)) +
               "</strong>" + (rci ? " (95% interval " + esc(fmt(rci[0], 1)) + "–" + esc(fmt(rci[1], 1)) + ")" : "") + ", mean cosine " +
               esc(fmt(ref.mean_cos, 3)) + ", over the same " + esc(fmt(ref.n_samples)) + " samples.</p>");
    }
    var h = c.histogram;
    if (h && h.labels && h.counts) {
      out.push('<table><thead><tr><th class="l">cosine bin</th>' + h.labels.map(function (l) { return "<th>" + esc(l) + "</th>"; }).join("") +
               '</tr></thead><tbody><tr><td class="l">pairs × samples</td>' + h.counts.map(function (n) { return "<td>" + esc(n) + "</td>"; }).join("") + "</tr></tbody></table>");
    }
    var layers = c.layers || {}, names = layers.names || [];
    if (names.length) {
      out.push('<h2>Per-layer conflict</h2><div class="scroll"><table id="layers" class="sortable"><thead><tr><th>#</th><th class="l">layer</th>' +
               '<th>parameters</th><th>mean cos</th><th>p% conflict</th><th class="l"></th></tr></thead><tbody>');
      names.forEach(function (name, i) {
        var params = (layers.params || [])[i], cos = (layers.mean_cos || [])[i], p = (layers.p_pct || [])[i];
        var bar = typeof p === "number" ? Math.round(p * 12) / 10 : 0;
        out.push('<tr><td data-v="' + (i + 1) + '">' + (i + 1) + '</td><td class="l">' + esc(name) + '</td><td data-v="' + sortValue(params) + '">' +
                 esc(thousands(params)) + '</td><td data-v="' + sortValue(cos) + '">' + esc(fmt(cos, 3)) + '</td><td data-v="' + sortValue(p) + '">' +
                 esc(fmt(p, 1)) + '</td><td class="l"><span class="bar" style="width: ' + bar + 'px"></span></td></tr>');
      });
      out.push("</tbody></table></div>");
    }
    var ls = c.layer_series;
    if (ls && ls.mean_cos && ls.conflicting_pairs) {
      var several = (c.pairs || []).length > 1;
      out.push("<h2>Per-layer conflict over training</h2><p class=\"note\">The mean cosine between task gradients on each shared layer at each sampled step " +
               "(red: conflict, cos &lt; 0; blue: agreement)" + (several ? ", then the share of task pairs in conflict" : "") +
               ". Drawn in the browser from the run's packed series.</p>" +
               '<div id="layer-heatmap" class="scroll" data-value="mean_cos" data-label="mean cosine per layer (rows) and sampled step (columns)"></div>' +
               (several ? '<div id="layer-heatmap-pairs" class="scroll" data-value="conflicting_pairs" data-label="share of task pairs in conflict per layer and sampled step"></div>' : ""));
    }
    return out.join("");
  }
  function mitigationHtml(r, label) {
    var report = r.mitigation_report, captions = ((r.mitigation_info || {}).report_tables) || {};
    if (!report || typeof report !== "object" || Array.isArray(report)) return "";
    var tables = [], rest = {};
    Object.keys(report).forEach(function (k) {
      var v = report[k];
      if (Array.isArray(v) && v.length && v.every(function (row) { return row && typeof row === "object" && !Array.isArray(row); })) tables.push([k, v]);
      else rest[k] = v;
    });
    var pairs = flatten(rest, "");
    if (!pairs.length && !tables.length) return "";
    var out = ["<h2>Mitigation: " + esc(label) + '</h2><dl class="kv">'];
    pairs.forEach(function (p) { out.push("<dt>" + esc(p[0]) + "</dt><dd>" + esc(typeof p[1] === "number" ? fmt(p[1], 4) : text(p[1])) + "</dd>"); });
    out.push("</dl>");
    tables.forEach(function (t, n) {
      var columns = [];
      t[1].forEach(function (row) { Object.keys(row).forEach(function (k) { if (columns.indexOf(k) < 0) columns.push(k); }); });
      out.push("<p>" + esc(captions[t[0]] || t[0]) + ':</p><div class="scroll"><table class="sortable" id="report-' + (n + 1) + '"><thead><tr><th>#</th>' +
               columns.map(function (c) { return '<th class="l">' + esc(c) + "</th>"; }).join("") + "</tr></thead><tbody>");
      t[1].forEach(function (row, i) {
        out.push('<tr><td data-v="' + (i + 1) + '">' + (i + 1) + "</td>" + columns.map(function (c) {
          var v = row[c], shown = typeof v === "boolean" ? (v ? "yes" : "") : Number.isInteger(v) ? thousands(v) : v === undefined ? "None" : text(v);
          return '<td class="l" data-v="' + sortValue(v) + '">' + esc(shown) + "</td>";
        }).join("") + "</tr>");
      });
      out.push("</tbody></table></div>");
    });
    return out.join("");
  }
  function renderRun() {
    var el = document.getElementById("run-result");
    if (!el) return;
    var r = JSON.parse(el.textContent), c = r.conflict && typeof r.conflict === "object" ? r.conflict : null;
    kv("run-selection", flatten(r.selection || {}, ""), undefined, "selection.");
    var charts = document.getElementById("run-charts");
    if (charts) charts.innerHTML = chartSpecs(r).map(lineChart).join("");
    var conflict = document.getElementById("run-conflict");
    if (conflict && c) {
      conflict.innerHTML = conflictHtml(c);
      var d = { steps: (c.series || {}).step || [], layers: (c.layers || {}).names || [], pairs: (c.pairs || []).length || 1,
                mean_cos: (c.layer_series || {}).mean_cos, conflicting_pairs: (c.layer_series || {}).conflicting_pairs };
      ["layer-heatmap", "layer-heatmap-pairs"].forEach(function (id) {
        var target = document.getElementById(id);
        if (target) heatmap(d, target);
      });
    }
    var mitigation = document.getElementById("run-mitigation");
    if (mitigation) mitigation.innerHTML = mitigationHtml(r, mitigation.getAttribute("data-label"));
    kv("run-cost", flatten(r.cost || {}, ""), 3);
    var config = document.getElementById("run-config");
    if (config) config.textContent = JSON.stringify(r.cell, null, 1);
    kv("run-provenance", flatten(r.provenance || {}, ""));
    var tb = document.getElementById("run-traceback");
    if (tb && r.traceback) tb.innerHTML = "<pre>" + esc(r.traceback) + "</pre>";
  }
})();
