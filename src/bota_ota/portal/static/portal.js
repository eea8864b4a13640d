// The portal's few behaviours, for every page (loaded with `defer`; no inline script anywhere, so a strict
// Content-Security-Policy holds). Everything works without it: it only keeps live regions polite, copies,
// confirms and keeps relative times fresh.
(function () {
  "use strict";

  const announced = new Map(); // id -> the last text said through the live region

  function announce(text) {
    const region = document.getElementById("live-status");
    if (!region) return;
    // Emptied first, so that saying the same words again is still a change a screen reader hears.
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 50);
  }

  function remember(root, speak) {
    root.querySelectorAll("[data-announce][id]").forEach(function (el) {
      const text = el.getAttribute("data-announce");
      const before = announced.get(el.id);
      announced.set(el.id, text);
      if (speak && before !== undefined && before !== text) announce(text);
    });
  }

  function focusInside(el) {
    const active = document.activeElement;
    return active && active !== document.body && el.contains(active);
  }

  // Live regions poll their own page. A swap is held back while keyboard focus is inside the region (the next
  // poll tries again), and a reply that lacks the region (signed out, an error page) never replaces it.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    const target = evt.detail.target;
    const elt = evt.detail.elt;
    if (!elt || !elt.hasAttribute("data-live")) return;
    // Every answered poll is counted on <body data-polls> (whether it is swapped or held back): something a
    // person (or a test) can watch to know that the page is live.
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    if (focusInside(target)) {
      evt.detail.shouldSwap = false;
      return;
    }
    if (evt.detail.xhr && evt.detail.xhr.status === 200 && target.id) {
      const doc = new DOMParser().parseFromString(evt.detail.serverResponse || "", "text/html");
      if (!doc.getElementById(target.id)) evt.detail.shouldSwap = false;
    }
  });

  // A failed HTMX request (an action in a live region, a poll answered 4xx/5xx) is answered with one sentence
  // retargeted at #live-error (portal/errors.py): show it there instead of dropping it.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    const xhr = evt.detail.xhr;
    if (xhr && xhr.status >= 400 && xhr.getResponseHeader("HX-Retarget") === "#live-error") {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });

  // No polling while the tab is hidden: nobody is looking, and the server has better things to do.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (document.hidden && evt.detail.elt && evt.detail.elt.hasAttribute("data-live")) evt.preventDefault();
  });

  document.addEventListener("htmx:afterSettle", function (evt) {
    const root = evt.detail.elt && evt.detail.elt.isConnected ? evt.detail.elt : document;
    remember(document, true);
    refreshTimes(root);
    markOverflow(document);
    document.dispatchEvent(new CustomEvent("bota:swapped", { detail: { id: evt.detail.elt && evt.detail.elt.id } }));
  });

  // <form data-confirm="Question?"> asks before it submits.
  document.addEventListener("submit", function (evt) {
    const form = evt.target;
    const question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) evt.preventDefault();
  }, true);

  // [data-copy] buttons copy their value; the button says so, and so does the live region.
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.addEventListener("click", function (evt) {
    const button = evt.target.closest && evt.target.closest("[data-copy]");
    if (!button) return;
    copyText(button.getAttribute("data-copy")).then(function () {
      button.textContent = "Copied";
      button.setAttribute("data-copied", "");
      announce("Copied to the clipboard.");
      window.setTimeout(function () { button.textContent = "Copy"; button.removeAttribute("data-copied"); }, 2000);
    }, function () {
      announce("Could not copy: select the text and copy it by hand.");
    });
  });

  // "5 minutes ago", kept fresh; the absolute time stays in the title.
  const units = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];
  const words = new Intl.RelativeTimeFormat("en", { numeric: "auto" });

  function relative(date) {
    const seconds = Math.round((date.getTime() - Date.now()) / 1000);
    if (Math.abs(seconds) < 45) return seconds <= 0 ? "just now" : "in a few seconds";
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size || unit === "minute") return words.format(Math.round(seconds / size), unit);
    }
    return words.format(seconds, "second");
  }

  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-relative]").forEach(function (el) {
      const date = new Date(el.getAttribute("datetime"));
      if (!isNaN(date.getTime())) el.textContent = relative(date);
    });
  }

  // A table wider than its card scrolls inside its region; the cue under it shows only when it does.
  function markOverflow(root) {
    root.querySelectorAll(".table-scroll").forEach(function (el) {
      el.toggleAttribute("data-overflow", el.scrollWidth > el.clientWidth + 1);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    remember(document, false);
    refreshTimes(document);
    markOverflow(document);
    window.setInterval(function () { refreshTimes(document); }, 30000);
    window.addEventListener("resize", function () { markOverflow(document); });
  });
})();
