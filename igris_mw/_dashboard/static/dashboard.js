// igris-mw dashboard: copy buttons and the live audit table. Everything else
// works without this file. Text is only ever set with textContent.
"use strict";

(function () {
  function copyButtons() {
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) return;
      button.hidden = false;
      var label = button.textContent;
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(source.textContent).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 1500);
        }, function () {
          var range = document.createRange();
          range.selectNodeContents(source);
          var selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
        });
      });
    });
  }

  function liveAudit(table) {
    var url = table.getAttribute("data-live-audit");
    var body = table.tBodies[0];
    var columns = table.tHead.rows[0].cells.length;
    var status = table.parentNode.nextElementSibling;
    var known = {};
    Array.prototype.forEach.call(body.rows, function (row) {
      if (row.getAttribute("data-id")) known[row.getAttribute("data-id")] = true;
    });
    var first = true;

    function render(rows) {
      var fragment = document.createDocumentFragment();
      rows.forEach(function (row) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-outcome", row.outcome);
        tr.setAttribute("data-id", row.id);
        if (!first && !known[row.id]) tr.className = "fresh";
        row.cells.forEach(function (text) {
          var td = document.createElement("td");
          td.textContent = text;
          tr.appendChild(td);
        });
        fragment.appendChild(tr);
      });
      if (!rows.length) {
        var tr = document.createElement("tr");
        tr.className = "empty";
        var td = document.createElement("td");
        td.colSpan = columns;
        td.textContent = "No events yet.";
        tr.appendChild(td);
        fragment.appendChild(tr);
      }
      known = {};
      rows.forEach(function (row) { known[row.id] = true; });
      first = false;
      body.replaceChildren(fragment);
    }

    function poll() {
      if (document.hidden) { setTimeout(poll, 2000); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          render(data.rows || []);
          if (status) { status.hidden = false; status.textContent = "Live: updated " + new Date().toLocaleTimeString(); }
          setTimeout(poll, 1500);
        })
        .catch(function () {
          if (status) { status.hidden = false; status.textContent = "Live updates paused (reload to resume)."; }
          setTimeout(poll, 10000);
        });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    copyButtons();
    document.querySelectorAll("table[data-live-audit]").forEach(liveAudit);
  });
})();
