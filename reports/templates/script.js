(function () {
  "use strict";
  var d = document;
  d.getElementById("tools").hidden = false;
  function setAll(open) {
    var all = d.querySelectorAll("details");
    for (var i = 0; i < all.length; i++) all[i].open = open;
  }
  d.getElementById("expand-all").addEventListener("click", function () { setAll(true); });
  d.getElementById("collapse-all").addEventListener("click", function () { setAll(false); });
  // Open the case (and its step log) a link points into.
  function reveal() {
    var id = decodeURIComponent(location.hash.slice(1));
    for (var e = id && d.getElementById(id); e; e = e.parentElement) {
      if (e.tagName === "DETAILS") e.open = true;
    }
  }
  window.addEventListener("hashchange", reveal);
  reveal();
  d.documentElement.setAttribute("data-script", "ran");
})();
