// The Run page: its confirmations as <dialog>s, and what its live refresh must not disturb.
// Without this script each action still asks: a retry or cancel button opens a
// confirmation page, a signal form a review page. Listeners sit on the document, so the
// parts the live refresh swaps in work as the first ones did.
(function () {
  "use strict";
  var HIDDEN = { csrf_token: true, name: true, idempotency_key: true, confirmed: true };

  function dialogFor(id) {
    var dialog = id && document.getElementById(id);
    return dialog && typeof dialog.showModal === "function" ? dialog : null;
  }

  // Retry and cancel: the button opens its dialog, which holds the POST form.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-dialog]");
    var dialog = button && dialogFor(button.getAttribute("data-dialog"));
    if (!dialog) { return; }
    event.preventDefault();
    dialog.showModal();
  });

  // "Keep it as it is" / "Change it": inside a dialog, they close it.
  document.addEventListener("click", function (event) {
    var closer = event.target.closest("[data-close]");
    var dialog = closer && closer.closest("dialog");
    if (!dialog) { return; }
    event.preventDefault();
    dialog.close();
  });

  // A signal: the form's values shown in a dialog; confirming sends it (confirmed=yes).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var dialog = form.matches("form[data-review]") && dialogFor(form.getAttribute("data-review"));
    if (!dialog || form.querySelector("input[name=confirmed]")) { return; }
    event.preventDefault();
    var list = dialog.querySelector(".review-values");
    list.textContent = "";
    Array.prototype.forEach.call(form.elements, function (field) {
      if (!field.name || HIDDEN[field.name]) { return; }
      var value = field.type === "checkbox" ? (field.checked ? "true" : "false") : field.value;
      var term = document.createElement("dt");
      var detail = document.createElement("dd");
      term.textContent = field.name;
      detail.textContent = value === "" ? "(empty)" : value;
      list.appendChild(term);
      list.appendChild(detail);
    });
    dialog.showModal();
  });

  document.addEventListener("click", function (event) {
    var confirm = event.target.closest("[data-confirm-review]");
    var dialog = confirm && confirm.closest("dialog");
    var form = dialog && document.querySelector('form[data-review="' + CSS.escape(dialog.id) + '"]');
    if (!form) { return; }
    var confirmed = document.createElement("input");
    confirmed.type = "hidden";
    confirmed.name = "confirmed";
    confirmed.value = "yes";
    form.appendChild(confirmed);
    dialog.close();
    form.submit();
  });

  // A form someone has typed in is theirs until they send it or leave the page.
  document.addEventListener("input", function (event) {
    var form = event.target.form;
    if (form) { form.setAttribute("data-edited", ""); }
  });

  // The live refresh (htmx, out of band). New actions wait while a dialog of the old ones
  // is open (then come in when it closes); a form someone typed in stays theirs. In every
  // part, what was open stays open and what was scrolled keeps its place; htmx itself
  // gives focus back to the element of the same id.
  var heldActions = null;
  var scrolled = {};

  function inUse(actions) {
    return actions.querySelector("dialog[open], form[data-edited]");
  }

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var old = event.detail.target;
    var fresh = event.detail.fragment;
    if (old.id === "run-actions") {
      heldActions = null;
      if (inUse(old)) {
        if (!old.querySelector("form[data-edited]")) { heldActions = fresh.firstElementChild; }
        event.detail.shouldSwap = false;
        return;
      }
    }
    old.querySelectorAll("details[open][data-key]").forEach(function (details) {
      var key = CSS.escape(details.getAttribute("data-key"));
      var same = fresh.querySelector('details[data-key="' + key + '"]');
      if (same) { same.open = true; }
    });
    old.querySelectorAll("[data-keep-scroll][id]").forEach(function (box) {
      scrolled[box.id] = [box.scrollLeft, box.scrollTop];
    });
  });

  document.addEventListener("htmx:oobAfterSwap", function () {
    Object.keys(scrolled).forEach(function (id) {
      var box = document.getElementById(id);
      if (box) { box.scrollLeft = scrolled[id][0]; box.scrollTop = scrolled[id][1]; }
    });
    scrolled = {};
  });

  // A dialog's "close" does not bubble: listen as it passes down.
  document.addEventListener("close", function () {
    var actions = document.getElementById("run-actions");
    if (!heldActions || !actions || inUse(actions)) { return; }
    var fresh = heldActions;
    var focused = actions.contains(document.activeElement) && document.activeElement.id;
    heldActions = null;
    actions.replaceWith(fresh);
    if (window.htmx) { window.htmx.process(fresh); }
    var again = focused && document.getElementById(focused);
    if (again) { again.focus({ preventScroll: true }); }  // the opener, if still offered
  }, true);
})();
