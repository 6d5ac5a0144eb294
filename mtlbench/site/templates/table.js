// Sortable and filterable tables, for pages opened from disk: no libraries, nothing remote.
// A <th> click sorts its column (numbers by the cell's data-v, else by text; missing values
// last); a <form class="filters" data-table="ID"> hides the rows whose data-<name> differs
// from a chosen <select name="..."> value or whose data-search lacks the typed text.
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
})();
