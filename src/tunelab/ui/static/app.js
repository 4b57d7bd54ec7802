// Keyboard shortcuts for the blind review (1 = A, 2 = B, 3 = tie, 4 = both wrong, Enter in the note
// with Ctrl saves) and a guard against saving one rating twice by a double click.
(function () {
  "use strict";
  var form = document.getElementById("rate-form");
  if (!form) { return; }
  var keys = { "1": "a", "2": "b", "3": "tie", "4": "both_wrong" };
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT") && target.type !== "radio") {
      if (event.key === "Enter" && event.ctrlKey) { form.requestSubmit(); }
      return;
    }
    var value = keys[event.key];
    if (value) {
      document.getElementById("choice-" + value).checked = true;
    }
  });
  form.addEventListener("submit", function () {
    var button = document.getElementById("submit");
    window.setTimeout(function () { button.disabled = true; }, 0);
  });
})();
