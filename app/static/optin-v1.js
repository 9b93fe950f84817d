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
  var apiOrigin = (data.api || scriptOrigin()).replace(/\/+$/, "");
  function scriptOrigin() {
    try {
      return script && script.src ? new URL(script.src, location.href).origin : "";
    } catch (error) {
      return "";
    }
  }
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

  // ---- QR code of the smart link: byte mode, error correction level M, versions 1 to 10
  // (up to 213 bytes). Written from the QR code standard (ISO/IEC 18004); no library, no CDN.
  // Per version: EC codewords per block, then [block count, data codewords per block] groups.
  var QR_BLOCKS = [
    null,
    [10, [1, 16]], [16, [1, 28]], [26, [1, 44]], [18, [2, 32]], [24, [2, 43]],
    [16, [4, 27]], [18, [4, 31]], [22, [2, 38], [2, 39]], [22, [3, 36], [2, 37]],
    [26, [4, 43], [1, 44]],
  ];
  var QR_ALIGNMENT = [
    null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34],
    [6, 22, 38], [6, 24, 42], [6, 26, 46], [6, 28, 50],
  ];
  var GF_EXP = [];
  var GF_LOG = [];
  (function () {
    var x = 1;
    for (var i = 0; i < 255; i++) {
      GF_EXP[i] = x;
      GF_LOG[x] = i;
      x <<= 1;
      if (x & 0x100) x ^= 0x11d;
    }
    for (i = 255; i < 512; i++) GF_EXP[i] = GF_EXP[i - 255];
  })();

  function gfMul(a, b) {
    return a && b ? GF_EXP[GF_LOG[a] + GF_LOG[b]] : 0;
  }

  function rsRemainder(data, degree) {
    var generator = [1]; // product of (x - a^i), highest power first
    for (var i = 0; i < degree; i++) {
      var next = [];
      for (var k = 0; k <= generator.length; k++) next.push(0);
      for (var j = 0; j < generator.length; j++) {
        next[j] ^= generator[j];
        next[j + 1] ^= gfMul(generator[j], GF_EXP[i]);
      }
      generator = next;
    }
    var remainder = [];
    for (i = 0; i < degree; i++) remainder.push(0);
    data.forEach(function (byte) {
      var factor = byte ^ remainder.shift();
      remainder.push(0);
      for (var n = 0; n < degree; n++) remainder[n] ^= gfMul(generator[n + 1], factor);
    });
    return remainder;
  }

  function qrCodewords(bytes) {
    var version, spec, capacity;
    for (version = 1; version <= 10; version++) {
      spec = QR_BLOCKS[version];
      capacity = 0;
      for (var g = 1; g < spec.length; g++) capacity += spec[g][0] * spec[g][1];
      if (4 + (version < 10 ? 8 : 16) + 8 * bytes.length <= capacity * 8) break;
    }
    if (version > 10) return null;
    var bits = [];
    var push = function (value, length) {
      for (var b = length - 1; b >= 0; b--) bits.push((value >>> b) & 1);
    };
    push(4, 4); // byte mode
    push(bytes.length, version < 10 ? 8 : 16);
    bytes.forEach(function (byte) { push(byte, 8); });
    push(0, Math.min(4, capacity * 8 - bits.length)); // terminator
    while (bits.length % 8) bits.push(0);
    var data = [];
    for (var i = 0; i < bits.length; i += 8) {
      var byte = 0;
      for (var k = 0; k < 8; k++) byte = (byte << 1) | bits[i + k];
      data.push(byte);
    }
    for (var pad = 0xec; data.length < capacity; pad ^= 0xec ^ 0x11) data.push(pad);
    var blocks = [];
    var offset = 0;
    for (g = 1; g < spec.length; g++) {
      for (var n = 0; n < spec[g][0]; n++) {
        var block = data.slice(offset, offset + spec[g][1]);
        offset += spec[g][1];
        blocks.push({ data: block, ec: rsRemainder(block, spec[0]) });
      }
    }
    var out = [];
    var longest = spec[spec.length - 1][1];
    for (i = 0; i < longest; i++) {
      blocks.forEach(function (b) { if (i < b.data.length) out.push(b.data[i]); });
    }
    for (i = 0; i < spec[0]; i++) {
      blocks.forEach(function (b) { out.push(b.ec[i]); });
    }
    return { version: version, codewords: out };
  }

  var QR_MASKS = [
    function (y, x) { return (x + y) % 2 === 0; },
    function (y) { return y % 2 === 0; },
    function (y, x) { return x % 3 === 0; },
    function (y, x) { return (x + y) % 3 === 0; },
    function (y, x) { return (Math.floor(y / 2) + Math.floor(x / 3)) % 2 === 0; },
    function (y, x) { return ((x * y) % 2) + ((x * y) % 3) === 0; },
    function (y, x) { return (((x * y) % 2) + ((x * y) % 3)) % 2 === 0; },
    function (y, x) { return (((x + y) % 2) + ((x * y) % 3)) % 2 === 0; },
  ];

  function qrPenalty(m) {
    var size = m.length;
    var score = 0;
    var dark = 0;
    var finderLike = [[1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1]];
    for (var a = 0; a < size; a++) {
      for (var pass = 0; pass < 2; pass++) { // rows, then columns
        var line = [];
        for (var b = 0; b < size; b++) line.push(pass ? m[b][a] : m[a][b]);
        var run = 1;
        for (b = 1; b <= size; b++) {
          if (b < size && line[b] === line[b - 1]) {
            run++;
          } else {
            if (run >= 5) score += run - 2;
            run = 1;
          }
        }
        for (b = 0; b + 11 <= size; b++) {
          finderLike.forEach(function (pattern) {
            for (var k = 0; k < 11; k++) if (line[b + k] !== pattern[k]) return;
            score += 40;
          });
        }
      }
      for (b = 0; b < size; b++) {
        dark += m[a][b];
        if (a + 1 < size && b + 1 < size) {
          var v = m[a][b];
          if (m[a][b + 1] === v && m[a + 1][b] === v && m[a + 1][b + 1] === v) score += 3;
        }
      }
    }
    return score + 10 * Math.floor(Math.abs((dark * 100) / (size * size) - 50) / 5);
  }

  function qrMatrix(text) {
    var encoded = qrCodewords(Array.prototype.slice.call(new TextEncoder().encode(text)));
    if (!encoded) return null;
    var version = encoded.version;
    var size = 17 + 4 * version;
    var modules = [];
    var reserved = [];
    for (var y = 0; y < size; y++) {
      modules.push([]);
      reserved.push([]);
      for (var x = 0; x < size; x++) {
        modules[y].push(0);
        reserved[y].push(false);
      }
    }
    function put(x, y, dark) {
      modules[y][x] = dark ? 1 : 0;
      reserved[y][x] = true;
    }
    function finder(cx, cy) { // centre of a finder pattern, with its light separator
      for (var dy = -4; dy <= 4; dy++) {
        for (var dx = -4; dx <= 4; dx++) {
          var px = cx + dx;
          var py = cy + dy;
          var ring = Math.max(Math.abs(dx), Math.abs(dy));
          if (px >= 0 && py >= 0 && px < size && py < size) put(px, py, ring !== 2 && ring !== 4);
        }
      }
    }
    for (var i = 0; i < size; i++) {
      put(6, i, i % 2 === 0);
      put(i, 6, i % 2 === 0);
    }
    finder(3, 3);
    finder(size - 4, 3);
    finder(3, size - 4);
    var centres = QR_ALIGNMENT[version];
    var last = centres.length - 1;
    centres.forEach(function (cy, row) {
      centres.forEach(function (cx, col) {
        if ((row === 0 && col === 0) || (row === 0 && col === last) || (row === last && col === 0)) {
          return; // where a finder pattern is
        }
        for (var dy = -2; dy <= 2; dy++) {
          for (var dx = -2; dx <= 2; dx++) {
            put(cx + dx, cy + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
          }
        }
      });
    });
    function formatBits(mask) {
      var data = (0 << 3) | mask; // level M is 00
      var rem = data;
      for (var n = 0; n < 10; n++) rem = (rem << 1) ^ ((rem >>> 9) * 0x537);
      var bits = ((data << 10) | rem) ^ 0x5412;
      var bit = function (k) { return (bits >>> k) & 1; };
      for (n = 0; n <= 5; n++) put(8, n, bit(n));
      put(8, 7, bit(6));
      put(8, 8, bit(7));
      put(7, 8, bit(8));
      for (n = 9; n < 15; n++) put(14 - n, 8, bit(n));
      for (n = 0; n < 8; n++) put(size - 1 - n, 8, bit(n));
      for (n = 8; n < 15; n++) put(8, size - 15 + n, bit(n));
      put(8, size - 8, 1); // the dark module
    }
    formatBits(0); // reserves the format areas; drawn again with the chosen mask
    if (version >= 7) {
      var rem = version;
      for (i = 0; i < 12; i++) rem = (rem << 1) ^ ((rem >>> 11) * 0x1f25);
      var versionBits = (version << 12) | rem;
      for (i = 0; i < 18; i++) {
        var dark = (versionBits >>> i) & 1;
        put(size - 11 + (i % 3), Math.floor(i / 3), dark);
        put(Math.floor(i / 3), size - 11 + (i % 3), dark);
      }
    }
    var index = 0;
    var codewords = encoded.codewords;
    for (var right = size - 1; right >= 1; right -= 2) {
      if (right === 6) right = 5; // the vertical timing column is skipped
      var upward = ((right + 1) & 2) === 0;
      for (var step = 0; step < size; step++) {
        y = upward ? size - 1 - step : step;
        for (var j = 0; j < 2; j++) {
          x = right - j;
          if (reserved[y][x]) continue;
          var byteIndex = index >>> 3;
          modules[y][x] =
            byteIndex < codewords.length ? (codewords[byteIndex] >>> (7 - (index & 7))) & 1 : 0;
          index++;
        }
      }
    }
    var best = null;
    var bestScore = Infinity;
    for (var mask = 0; mask < 8; mask++) {
      var base = modules.map(function (row) { return row.slice(); });
      for (y = 0; y < size; y++) {
        for (x = 0; x < size; x++) {
          if (!reserved[y][x] && QR_MASKS[mask](y, x)) modules[y][x] ^= 1;
        }
      }
      formatBits(mask);
      var score = qrPenalty(modules);
      if (score < bestScore) {
        bestScore = score;
        best = modules.map(function (row) { return row.slice(); });
      }
      modules = base;
    }
    return best;
  }

  function qrSvg(text) {
    var matrix = qrMatrix(text);
    if (!matrix) return null;
    var quiet = 4;
    var full = matrix.length + 2 * quiet;
    var path = "";
    matrix.forEach(function (row, y) {
      row.forEach(function (dark, x) {
        if (dark) path += "M" + (x + quiet) + " " + (y + quiet) + "h1v1h-1z";
      });
    });
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + full + " " + full);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "QR code of the sign-up link");
    svg.setAttribute("shape-rendering", "crispEdges");
    var background = document.createElementNS(ns, "rect");
    background.setAttribute("width", String(full));
    background.setAttribute("height", String(full));
    background.setAttribute("fill", "#fff");
    var modulesPath = document.createElementNS(ns, "path");
    modulesPath.setAttribute("d", path);
    modulesPath.setAttribute("fill", "#000");
    svg.appendChild(background);
    svg.appendChild(modulesPath);
    return svg;
  }

  window.OptInV1 = window.OptInV1 || {};
  window.OptInV1.version = 1;
  window.OptInV1.qrSvg = qrSvg;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
