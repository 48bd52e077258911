// The console's little script: htmx requests carry the session's CSRF token, and the
// live-refresh regions pause while the user is typing in them or the tab is hidden.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');

  document.addEventListener("htmx:configRequest", function (event) {
    if (meta) { event.detail.headers["X-CSRF-Token"] = meta.content; }
  });

  // A refresh must never pull the content out from under the keyboard: skip a live
  // region's refresh while focus is inside it, or while the page is not visible.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt.hasAttribute("data-live")) { return; }
    if (document.hidden || elt.contains(document.activeElement)) { event.preventDefault(); }
  });

  // On a phone the filters fold away unless some are set: the runs come first.
  document.addEventListener("DOMContentLoaded", function () {
    if (!window.matchMedia("(max-width: 40rem)").matches) { return; }
    document.querySelectorAll('details[data-collapse-on-phone="yes"]').forEach(function (box) {
      box.open = false;
    });
  });

  // Confirm buttons without inline script: <button data-confirm="Cancel run …?">
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var ask = (button && button.getAttribute("data-confirm")) ||
              event.target.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) { event.preventDefault(); }
  }, true);
})();
