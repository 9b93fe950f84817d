// Progressive enhancement only: every page works without this file.
// Shows the custom date fields of the overview only when "Custom dates" is chosen.
(function () {
  "use strict";
  var select = document.getElementById("window");
  if (!select) {
    return;
  }
  var ranges = document.querySelectorAll(".custom-range");
  function sync() {
    var custom = select.value === "custom";
    ranges.forEach(function (range) {
      range.hidden = !custom;
    });
  }
  select.addEventListener("change", sync);
  sync();
})();
