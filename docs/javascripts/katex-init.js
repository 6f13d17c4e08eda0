/* Render the TeX that pymdownx.arithmatex (generic mode) leaves in <span|div class="arithmatex">, with the
 * KaTeX build vendored under docs/vendor/katex/ (MIT, see its LICENSE). Nothing is fetched from the network.
 * Inline math arrives as \( ... \), display math as \[ ... \]; anything KaTeX cannot parse stays visible as
 * red TeX (class katex-error) instead of breaking the page. */
(function () {
  "use strict";

  var DELIMS = /^\s*\\[([]([\s\S]*)\\[)\]]\s*$/;

  function renderMath(root) {
    if (typeof katex === "undefined") {
      return;
    }
    var nodes = root.querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      if (el.getAttribute("data-katex") === "done") {
        continue;
      }
      var m = DELIMS.exec(el.textContent);
      var tex = m ? m[1] : el.textContent;
      katex.render(tex, el, {
        displayMode: el.tagName === "DIV",
        throwOnError: false,
        strict: "ignore",
        output: "htmlAndMathml",
      });
      el.setAttribute("data-katex", "done");
    }
  }

  if (typeof document$ !== "undefined") {
    // Material for MkDocs: runs on the first load and after each instant-navigation page swap
    document$.subscribe(function () {
      renderMath(document.body);
    });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      renderMath(document.body);
    });
  } else {
    renderMath(document.body);
  }
})();
