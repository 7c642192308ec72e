// Pages refresh on their own: the main part is fetched again and swapped in, unless the person
// is typing in a form or a dialog is open, so a wall screen stays current and a desk one usable.
(function () {
  const seconds = Number(document.body.dataset.refresh || 0);
  document.addEventListener("submit", function (event) {
    const message = event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
  if (!seconds) return;
  async function refresh() {
    const active = document.activeElement;
    if (active && ["INPUT", "SELECT", "TEXTAREA"].includes(active.tagName)) return;
    // Nor while a form holds something typed and not sent yet (a reason, say).
    const fields = document.querySelectorAll("#main form[method=post] input:not([type=hidden])");
    if (Array.from(fields).some((field) => field.value !== field.defaultValue)) return;
    try {
      // A page that says what it shows (`data-shown`) is answered 204 while that is unchanged:
      // the application page then costs the process engine no status query.
      const headers = { "X-Refresh": "1" };
      const shown = document.getElementById("main").dataset.shown;
      if (shown) headers["X-Shown"] = shown;
      const response = await fetch(window.location.href, { headers: headers });
      if (response.status === 204) {
        document.getElementById("updated").textContent = "checked " + new Date().toLocaleTimeString();
        return;
      }
      if (!response.ok || response.redirected) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("main");
      const stamp = page.getElementById("updated");
      if (fresh) document.getElementById("main").replaceWith(fresh);
      if (stamp) document.getElementById("updated").replaceWith(stamp);
    } catch (error) {
      document.getElementById("updated").textContent = "refresh failed, retrying";
    }
  }
  window.setInterval(refresh, seconds * 1000);
})();
