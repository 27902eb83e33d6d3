// orchestrator web UI: live refresh of the runs list and of a live run, confirmations. Pages work without it.
(function () {
  "use strict";
  var poll = parseFloat(document.body.dataset.poll || "3") * 1000;
  // Once a form is on its way (an action posting), a reload would abandon its answer: stop refreshing.
  var leaving = false;
  document.addEventListener("submit", function (ev) { if (!ev.defaultPrevented) leaving = true; });
  window.addEventListener("beforeunload", function () { leaving = true; });

  // Runs list: re-fetch the rows (same filter, first page) while "live" is ticked.
  var rows = document.getElementById("run-rows");
  var live = document.getElementById("live");
  if (rows && live) {
    setInterval(function () {
      if (leaving || !live.checked || document.hidden) return;
      fetch(rows.dataset.src, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) rows.innerHTML = html; })
        .catch(function () {});
    }, poll);
  }

  // A run still going: reload it, unless someone is typing in one of its forms.
  if (document.getElementById("live-run")) {
    setInterval(function () {
      var active = document.activeElement;
      if (leaving || document.hidden || (active && (active.tagName === "INPUT" || active.tagName === "SELECT"))) return;
      location.reload();
    }, poll);
  }

  // Forms that ask first.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  });

  // "Select all" checkboxes.
  document.querySelectorAll("input[data-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      document.querySelectorAll("input[name='" + box.dataset.all + "']").forEach(function (b) { b.checked = box.checked; });
    });
  });
})();
