// Live refresh, and nothing else: a page marked data-refresh-seconds is fetched again in the background and its
// main content swapped in. Without JavaScript the page is the same, refreshed by the reader.
const main = document.getElementById("maincontent");
const seconds = Number(main && main.dataset.refreshSeconds);
if (main && seconds > 0) {
  setInterval(async () => {
    if (document.hidden) return;
    const reply = await fetch(window.location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } });
    if (!reply.ok || reply.redirected) return;
    const fresh = new DOMParser().parseFromString(await reply.text(), "text/html").getElementById("maincontent");
    if (fresh) main.replaceChildren(...fresh.childNodes);
  }, seconds * 1000);
}
