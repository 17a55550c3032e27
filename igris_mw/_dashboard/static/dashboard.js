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
    var shown = Object.keys(known).join(" ");

    function render(rows) {
      var ids = rows.map(function (row) { return row.id; }).join(" ");
      if (ids === shown) return 0;  // nothing new: leave the table (and any selection) alone
      shown = ids;
      var fresh = 0;
      var fragment = document.createDocumentFragment();
      rows.forEach(function (row) {
        var tr = document.createElement("tr");
        tr.setAttribute("data-outcome", row.outcome);
        tr.setAttribute("data-id", row.id);
        if (!known[row.id]) { tr.className = "fresh"; fresh += 1; }
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
      body.replaceChildren(fragment);
      return fresh;
    }

    // Announced (aria-live) only when something changes, not on every poll.
    function say(text) {
      if (status && status.textContent !== text) { status.hidden = false; status.textContent = text; }
    }

    function poll() {
      if (document.hidden) { setTimeout(poll, 2000); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (response.status === 401) {
            say("Your session has ended: reload the page to sign in again.");
            return null;
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          if (data === null) return;  // signed out: stop polling
          var fresh = render(data.rows || []);
          if (fresh) {
            say(fresh + (fresh === 1 ? " new event" : " new events") + " at " +
                new Date().toLocaleTimeString() + ".");
          } else if (status && !status.textContent) {
            say("Updated live.");
          }
          setTimeout(poll, 1500);
        })
        .catch(function () {
          say("Live updates paused; they resume by themselves.");
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
