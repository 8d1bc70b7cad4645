// Runs in <head> before first paint: apply the saved theme so the page never flashes.
(function () {
  "use strict";
  try {
    var saved = localStorage.getItem("ltk-theme");
    if (saved === "dark" || saved === "light") {
      document.documentElement.setAttribute("data-theme", saved);
    }
  } catch (e) { /* storage disabled: follow the system setting */ }
})();
