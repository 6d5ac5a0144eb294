// Sortable and filterable tables, for pages opened from disk: no libraries, nothing remote.
// A <th> click sorts its column (numbers by the cell's data-v, else by text; missing values
// last); a <form class="filters" data-table="ID"> hides the rows whose data-<name> differs
// from a chosen <select name="..."> value or whose data-search lacks the typed text.
// A <script type="application/json" class="layer-series"> (a run's per-layer conflict series,
// packed columnar arrays: little-endian, base64) is drawn as heatmaps into the elements
// its data-targets names, each showing the array its data-value names. A <script
// type="application/json" class="line-charts"> (a list of {title, xlabel, hline, lines: [[name,
// xs, ys]]}) is drawn as line charts into the element named by its data-target.
(function () {
  "use strict";
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
  document.querySelectorAll('script[type="application/json"].layer-series').forEach(function (el) {
    var d = JSON.parse(el.textContent);
    (el.getAttribute("data-targets") || "").split(" ").forEach(function (id) {
      var target = id && document.getElementById(id);
      if (target) heatmap(d, target);
    });
  });
  var PALETTE = ["#2457c5", "#d9730d", "#137333", "#a50e0e", "#7b3fb5", "#8c6d1f", "#00838f", "#c2185b", "#455a64", "#6d8f00"];
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
  document.querySelectorAll('script[type="application/json"].line-charts').forEach(function (el) {
    var target = document.getElementById(el.getAttribute("data-target"));
    if (target) target.innerHTML = JSON.parse(el.textContent).map(lineChart).join("");
  });
})();
