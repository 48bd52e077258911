// The Run page's confirmations as <dialog>s. Without this script each still asks: a
// retry or cancel button opens a confirmation page, a signal form a review page.
(function () {
  "use strict";
  var HIDDEN = { csrf_token: true, name: true, idempotency_key: true, confirmed: true };

  function closeOn(dialog) {
    dialog.querySelectorAll("[data-close]").forEach(function (closer) {
      closer.addEventListener("click", function (event) {
        event.preventDefault();
        dialog.close();
      });
    });
  }

  // Retry and cancel: the button opens its dialog, which holds the POST form.
  document.querySelectorAll("button[data-dialog]").forEach(function (button) {
    var dialog = document.getElementById(button.getAttribute("data-dialog"));
    if (!dialog || typeof dialog.showModal !== "function") { return; }
    closeOn(dialog);
    button.addEventListener("click", function (event) {
      event.preventDefault();
      dialog.showModal();
    });
  });

  // A signal: the form's values shown in a dialog; confirming sends it (confirmed=yes).
  document.querySelectorAll("form[data-review]").forEach(function (form) {
    var dialog = document.getElementById(form.getAttribute("data-review"));
    if (!dialog || typeof dialog.showModal !== "function") { return; }
    var list = dialog.querySelector(".review-values");
    closeOn(dialog);
    form.addEventListener("submit", function (event) {
      if (form.querySelector("input[name=confirmed]")) { return; }
      event.preventDefault();
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
    dialog.querySelector("[data-confirm-review]").addEventListener("click", function () {
      var confirmed = document.createElement("input");
      confirmed.type = "hidden";
      confirmed.name = "confirmed";
      confirmed.value = "yes";
      form.appendChild(confirmed);
      dialog.close();
      form.submit();
    });
  });
})();
