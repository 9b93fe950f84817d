/*! optin-v1.js: turns a button or link into the visitor's iMessage/SMS opt-in link.
 *
 * Include once, as a classic script, after or around the button:
 *   <a href="#" data-optin>Text us to join</a>
 *   <p data-optin-message role="status" aria-live="polite"></p>   (optional)
 *   <div data-optin-qr></div>                                      (optional, desktop QR code)
 *   <script src="https://api.example.com/static/optin-v1.js"
 *           data-api="https://api.example.com" defer></script>
 *
 * Script attributes: data-api (the API origin; default: where this file came from),
 * data-body (prefilled text, must contain [opt-in-code]), data-list (routing key, sent as
 * params.list), data-target (CSS selector of the buttons; default [data-optin]).
 * The page's click_id (or gclid / fbclid / ttclid) and utm_* are sent along.
 * Each button gets data-optin-state="loading" | "ready" | "error" and fires the bubbling
 * events optin:ready (detail: the links) and optin:error (detail: {status, message}).
 * The file name carries its version: a change ships as optin-v2.js, never as a new optin-v1.js.
 */
(function () {
  "use strict";
  if (window.OptInV1) return; // included twice: the first copy does the work

  var script =
    document.currentScript || document.querySelector('script[src*="optin-v1"]');
  var data = (script && script.dataset) || {};
  var apiOrigin = (data.api || (script ? new URL(script.src, location.href).origin : ""))
    .replace(/\/+$/, "");
  var targetSelector = data.target || "[data-optin]";
  var MAX_FIELD = 500;
  var CLICK_IDS = ["click_id", "gclid", "fbclid", "ttclid"];
  var UTM = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"];
  var TEXT = {
    loading: "Preparing your sign-up link\u2026",
    wait: "One moment, your sign-up link is almost ready\u2026",
    network: "Sorry, we couldn't reach our sign-up service. Please try again in a moment.",
    busy: "Lots of people are signing up right now. Please try again in {s} seconds.",
    failed: "Sorry, sign-up is briefly unavailable. Please try again in a moment.",
    retry: "Tap the button to try again.",
    qr: "On your phone? Scan this code with the camera to open Messages.",
  };

  function pageRequest() {
    var query = new URLSearchParams(location.search);
    var body = {};
    for (var i = 0; i < CLICK_IDS.length; i++) {
      var clickId = query.get(CLICK_IDS[i]);
      if (clickId) {
        body.click_id = clickId.slice(0, MAX_FIELD);
        break;
      }
    }
    UTM.forEach(function (name) {
      var value = query.get(name);
      if (value) body[name] = value.slice(0, MAX_FIELD);
    });
    body.page_url = (location.origin + location.pathname + location.search).slice(0, 2000);
    if (data.body) body.body = data.body;
    if (data.list) body.params = { list: data.list.slice(0, MAX_FIELD) };
    return body;
  }

  function messageFor(button) {
    var box = document.querySelector("[data-optin-message]");
    if (!box) {
      box = document.createElement("p");
      box.setAttribute("data-optin-message", "");
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      button.insertAdjacentElement("afterend", box);
    }
    return box;
  }

  function setState(buttons, state, message) {
    buttons.forEach(function (button) {
      button.setAttribute("data-optin-state", state);
      button.setAttribute("aria-disabled", state === "loading" ? "true" : "false");
    });
    if (buttons.length) {
      var box = messageFor(buttons[0]);
      box.textContent = message || "";
      box.setAttribute("data-optin-kind", state);
    }
  }

  function announce(buttons, name, detail) {
    buttons.forEach(function (button) {
      button.dispatchEvent(new CustomEvent(name, { detail: detail, bubbles: true }));
    });
  }

  function failure(status, retryAfter) {
    if (status === 0) return TEXT.network;
    if (status === 429) {
      var seconds = parseInt(retryAfter || "", 10);
      return TEXT.busy.replace("{s}", seconds > 0 ? String(seconds) : "a few");
    }
    return TEXT.failed;
  }

  function showQr(links) {
    var box = document.querySelector("[data-optin-qr]");
    if (!box || links.recommended !== "url" || !links.url) return;
    var render = window.OptInV1 && window.OptInV1.qrSvg;
    var svg = render ? render(links.url) : null;
    if (!svg) return; // no encoder, or a link too long for it: the button still works
    box.innerHTML = "";
    box.appendChild(svg);
    var caption = document.createElement("p");
    caption.textContent = TEXT.qr;
    box.appendChild(caption);
    box.hidden = false;
  }

  var current = { links: null, busy: false };

  function load(buttons) {
    if (current.busy) return;
    current.busy = true;
    setState(buttons, "loading", TEXT.loading);
    var controller = "AbortController" in window ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, 20000) : null;
    fetch(apiOrigin + "/v1/opt-in-links", {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(pageRequest()),
      signal: controller ? controller.signal : undefined,
    })
      .then(function (response) {
        if (!response.ok) {
          var error = new Error("HTTP " + response.status);
          error.status = response.status;
          error.retryAfter = response.headers.get("Retry-After");
          throw error;
        }
        return response.json();
      })
      .then(function (links) {
        var link = links[links.recommended] || links.url || links.sms || links.imessage;
        if (!link) throw Object.assign(new Error("no link in the answer"), { status: 502 });
        current.links = links;
        buttons.forEach(function (button) {
          if (button.tagName === "A") button.setAttribute("href", link);
          button.setAttribute("data-optin-link", link);
        });
        setState(buttons, "ready", "");
        showQr(links);
        announce(buttons, "optin:ready", links);
      })
      .catch(function (error) {
        var status = typeof error.status === "number" ? error.status : 0;
        var text = failure(status, error.retryAfter);
        setState(buttons, "error", text + " " + TEXT.retry);
        announce(buttons, "optin:error", { status: status, message: text });
      })
      .then(function () {
        if (timer) clearTimeout(timer);
        current.busy = false;
      });
  }

  function start() {
    var buttons = Array.prototype.slice.call(document.querySelectorAll(targetSelector));
    if (!buttons.length || !apiOrigin) return;
    buttons.forEach(function (button) {
      button.addEventListener("click", function (event) {
        var state = button.getAttribute("data-optin-state");
        if (state === "ready") {
          if (button.tagName !== "A") location.href = button.getAttribute("data-optin-link");
          return; // a link follows its href
        }
        event.preventDefault();
        if (state === "error") load(buttons);
        else messageFor(button).textContent = TEXT.wait;
      });
    });
    load(buttons);
  }

  window.OptInV1 = window.OptInV1 || {};
  window.OptInV1.version = 1;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
