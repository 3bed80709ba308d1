// The Tripwire tag. Size is the first design goal: old-style JS in one IIFE, no classes, no
// dependencies, nothing the minifier cannot shorten. VERSION is defined by build.mjs.
// Every entry point (calls, timers, listeners, history hooks) catches its own errors: the tag
// must never throw into the page, even when storage or cookies are blocked.
(function (w, d, nav, history) {
  var PREFIX = "tw_"; // cookie and localStorage keys
  var BATCH = 20; // messages per request
  var KEPT = 100; // unsent messages kept in localStorage
  var script = d.currentScript;
  var name = (script && script.getAttribute("data-name")) || "tripwire";
  var stub = w[name];
  var cfg; // the init options, once init has run
  var endpoint;
  var anonymousId;
  var userId = load("uid");
  var userHash = load("uh"); // the site's signature of userId (identity verification)
  var optedOut = load("off");
  var held = []; // calls made before init, replayed right after it
  var queue = []; // unsent messages, oldest first, mirrored in localStorage
  var timer;
  var busy; // a fetch is in flight
  var failures = 0; // consecutive failed sends: the backoff exponent
  var lastUrl;
  var referrer = d.referrer;

  if (stub && stub.tw) return; // the snippet was pasted twice: the first copy runs

  function load(key) {
    try {
      return localStorage.getItem(PREFIX + key);
    } catch (e) {}
  }

  function store(key, value) {
    try {
      value == null
        ? localStorage.removeItem(PREFIX + key)
        : localStorage.setItem(PREFIX + key, value);
    } catch (e) {}
  }

  function save() {
    store("q", JSON.stringify(queue));
  }

  function uuid() {
    return "10000000-1000-4000-8000-100000000000".replace(/[018]/g, function (c) {
      return (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16);
    });
  }

  function setAnonymousId(id) {
    anonymousId = id;
    store("aid", id);
    try {
      d.cookie =
        PREFIX + "aid=" + id + ";max-age=34560000;path=/;samesite=lax" +
        (cfg.cookieDomain ? ";domain=" + cfg.cookieDomain : "");
    } catch (e) {}
  }

  function off() {
    return optedOut || (cfg.gpc && nav.globalPrivacyControl);
  }

  function init(options) {
    var cookie;
    cfg = options;
    endpoint = (options.host || "").replace(/\/+$/, "") + "/v1/batch";
    try {
      cookie = d.cookie.match(/(?:^|; )tw_aid=([^;]+)/);
    } catch (e) {}
    setAnonymousId((cookie && cookie[1]) || load("aid") || uuid());
    try {
      queue = JSON.parse(load("q")) || [];
    } catch (e) {}
    ["pushState", "replaceState"].forEach(function (method) {
      var original = history[method];
      history[method] = function () {
        var result = original.apply(this, arguments);
        navigated();
        return result;
      };
    });
    w.addEventListener("popstate", navigated);
    w.addEventListener("pagehide", beacon);
    d.addEventListener("visibilitychange", function () {
      d.visibilityState == "hidden" && beacon();
    });
    page();
    held.forEach(call);
  }

  // The page's URL without its fragment: following an in-page anchor is not a page view.
  function here() {
    return location.href.split("#")[0];
  }

  function navigated() {
    try {
      if (here() != lastUrl) {
        referrer = lastUrl;
        page();
      }
    } catch (e) {}
  }

  function page(properties) {
    lastUrl = here();
    send("page", { name: d.title, properties: properties || {} });
  }

  function send(type, message) {
    var l = location;
    var search = l.search;
    var params = new URLSearchParams(search);
    var campaign = {};
    var utm;
    if (off()) return;
    "source medium name term content".split(" ").forEach(function (key) {
      var value = params.get("utm_" + (key == "name" ? "campaign" : key));
      if (value) utm = campaign[key] = value;
    });
    message.type = type;
    message.messageId = uuid();
    message.anonymousId = anonymousId;
    message.userId = userId || undefined;
    message.timestamp = new Date().toISOString();
    message.context = {
      page: { path: l.pathname, url: here(), title: d.title, referrer: referrer, search: search },
      locale: nav.language,
      timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
      userAgent: nav.userAgent,
      campaign: utm && campaign,
      library: { name: "tripwire.js", version: VERSION },
      userHash: (userId && userHash) || undefined,
    };
    JSON.stringify(message); // a property that cannot be sent (a cycle) fails this call only
    queue.push(message) > KEPT && queue.shift();
    save();
    queue.length < BATCH || failures ? schedule(1e3) : flush();
  }

  function schedule(ms) {
    timer = timer || setTimeout(flush, ms);
  }

  function body(batch) {
    return JSON.stringify({ writeKey: cfg.writeKey, batch: batch, sentAt: new Date().toISOString() });
  }

  function flush() {
    var batch = queue.slice(0, BATCH);
    clearTimeout(timer);
    timer = 0;
    if (busy || !batch.length) return;
    try {
      fetch(endpoint, {
        method: "POST",
        keepalive: true,
        headers: { "Content-Type": "text/plain" },
        body: body(batch),
      }).then(
        function (response) {
          sent(batch, response.status);
        },
        function () {
          sent(batch, 0);
        }
      );
      busy = 1;
    } catch (e) {}
  }

  // Network errors, 429 and 5xx keep the batch for a later try; any other answer settles it.
  function sent(batch, status) {
    busy = 0;
    if (!status || status == 429 || status > 499) {
      clearTimeout(timer); // a backoff replaces any sooner flush
      timer = setTimeout(
        flush,
        Math.min(3e4, 1e3 * Math.pow(2, failures++)) * (0.5 + Math.random() / 2)
      );
    } else {
      failures = 0;
      queue = queue.filter(function (message) {
        return batch.indexOf(message) < 0;
      });
      save();
      flush();
    }
  }

  // While the collector is failing, unsent messages stay in localStorage for the next page
  // rather than going out in a beacon nobody can retry.
  function beacon() {
    try {
      failures ||
        (queue.length && nav.sendBeacon(endpoint, body(queue)) && ((queue = []), save()));
    } catch (e) {}
  }

  function call(args) {
    try {
      var method = args[0];
      if (method == "optOut") {
        optedOut = 1;
        store("off", 1);
        queue = [];
        save();
      } else if (method == "optIn") {
        optedOut = 0;
        store("off");
      } else if (method == "init") {
        cfg || init(args[1] || {});
      } else if (!cfg) {
        held.push(args);
      } else if (method == "track") {
        send("track", { event: args[1], properties: args[2] || {} });
      } else if (method == "page") {
        page(args[1]);
      } else if (method == "identify") {
        var id = args[1];
        var traits = args[2];
        if (id && typeof id == "object") {
          traits = id;
          id = 0;
        }
        if (id) {
          store("uid", (userId = "" + id));
          store("uh", (userHash = args[3]));
        }
        send("identify", { traits: traits || {} });
      } else if (method == "reset") {
        userId = userHash = 0;
        store("uid");
        store("uh");
        setAnonymousId(uuid());
      }
    } catch (e) {}
  }

  w[name] = function () {
    call(arguments);
  };
  w[name].tw = 1;
  ((stub && stub.q) || []).forEach(call);
})(window, document, navigator, history);
