"""The report page's stylesheet and script, inlined into every report (no files to ship, nothing fetched)."""

CSS = """\
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #1b1b1b; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta, .how { color: #555; } .note { background: #fff7e0; border-left: 4px solid #e0b000; padding: 6px 10px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; } figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.plot { background: #fff; border: 1px solid #e5e5e5; }
svg .grid { stroke: #eee; } svg .tick { font-size: 11px; fill: #666; } svg .axis { font-size: 12px; fill: #333; }
svg .trace { fill: none; stroke-width: 1.5; opacity: 0.6; }
svg .pareto { fill: none; stroke: #000; stroke-dasharray: 5 4; stroke-width: 1.2; }
svg circle { stroke: #fff; stroke-width: 1; cursor: pointer; } svg circle.front { stroke: #000; stroke-width: 2.5; }
.series.off, .method.off, table.off { display: none; }
.legend { margin: 8px 0; } .hint { color: #777; font-size: 12px; margin-left: 8px; }
.toggle { background: #fff; border: 2px solid; border-radius: 12px; padding: 2px 10px; margin: 2px; cursor: pointer; }
.toggle.off { opacity: 0.35; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 6px; }
table { border-collapse: collapse; margin: 4px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f5f5f5; cursor: pointer; }
td:first-child, th:first-child { text-align: left; }
.tip { position: fixed; pointer-events: none; background: #222; color: #fff; padding: 4px 8px; border-radius: 4px;
       font-size: 12px; white-space: pre; }
"""

JS = """\
// tokenreduce report: tooltips, method toggles, sortable tables. No external code.
(function () {
  "use strict";
  var tip = document.getElementById("tip");
  document.querySelectorAll("svg.plot circle").forEach(function (c) {
    c.addEventListener("mousemove", function (e) {
      tip.textContent = c.dataset.label + "\\nx = " + c.dataset.x + "\\ny = " + c.dataset.y;
      tip.style.left = e.clientX + 12 + "px";
      tip.style.top = e.clientY + 12 + "px";
      tip.hidden = false;
    });
    c.addEventListener("mouseleave", function () { tip.hidden = true; });
  });
  document.querySelectorAll("button.toggle").forEach(function (b) {
    b.addEventListener("click", function () {
      var section = b.closest("section");
      var off = b.classList.toggle("off");
      section.querySelectorAll('[data-method="' + b.dataset.method + '"]').forEach(function (el) {
        if (el !== b) {
          el.classList.toggle("off", off);
          if (el.tagName === "H3" && el.nextElementSibling) el.nextElementSibling.classList.toggle("off", off);
        }
      });
    });
  });
  document.querySelectorAll("table.sortable th").forEach(function (th, i) {
    th.addEventListener("click", function () {
      var table = th.closest("table"), body = table.tBodies[0];
      var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
      var asc = th.dataset.sort !== "asc";
      th.parentNode.querySelectorAll("th").forEach(function (h) { delete h.dataset.sort; });
      th.dataset.sort = asc ? "asc" : "desc";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[idx].dataset.v, y = b.cells[idx].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y);
        var r = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var data = JSON.parse(document.getElementById("report-data").textContent);
  document.body.dataset.ready = String(data.methods.length);
})();
"""
