/* Keep numeric table cells on one line ("84.4 ± 0.3", "47.58 ± 0.24%", "1.33–1.53×"): a value broken after
 * its "±" is hard to read. Cells with words still wrap. A table that gets too wide scrolls in its own box
 * (stylesheets/extra.css). */
(function () {
  "use strict";

  var NUMERIC = /^[\s\d.,:%±×~≈<>=+\-–−/()]+$/;

  function keepNumbersWhole(root) {
    var cells = root.querySelectorAll(".md-typeset table:not([class]) td");
    for (var i = 0; i < cells.length; i++) {
      var text = cells[i].textContent;
      if (text.length <= 32 && /\d/.test(text) && NUMERIC.test(text)) {
        cells[i].classList.add("rf-number");
      }
    }
  }

  if (typeof document$ !== "undefined") {
    document$.subscribe(function () {
      keepNumbersWhole(document.body);
    });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      keepNumbersWhole(document.body);
    });
  } else {
    keepNumbersWhole(document.body);
  }
})();
