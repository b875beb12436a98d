// Staff QR page: its live part (the link's state and its uploads, rendered by the server) is
// fetched every 2 s and replaced when it changed, until nothing more can change.
"use strict";

(() => {
  const section = document.querySelector("[data-live]");
  if (!section) return;
  let shown = section.querySelector("#live").outerHTML;

  async function update() {
    const response = await fetch(section.dataset.live, { cache: "no-store" }).catch(() => null);
    if (!response) return true; // a dropped connection: try again
    if (!response.ok) return false; // logged out or the session is gone
    const html = await response.text();
    if (html !== shown) {
      section.querySelector("#live").outerHTML = html;
      shown = html;
    }
    return section.querySelector("#live").dataset.final !== "true";
  }

  async function loop() {
    if (await update()) setTimeout(loop, 2000);
  }
  setTimeout(loop, 2000);
})();
