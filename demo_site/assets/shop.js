// The demo shop's own code: a tiny catalog, a cart in localStorage, the calls to the Tripwire tag,
// and a panel showing the webhooks the collector sends to its request bin, as they arrive.
(function () {
  "use strict";

  var CATALOG = {
    kettle: {name: "Gooseneck Kettle", price: 68, art: "\u2615", blurb: "Pour-over precision with a built-in thermometer."},
    grinder: {name: "Burr Grinder", price: 149, art: "\u2699", blurb: "Forty grind settings, from espresso to cold brew."},
    beans: {name: "House Blend Beans", price: 18, art: "\u2766", blurb: "Chocolate, cherry and a long, sweet finish. 250 g."}
  };

  function tw() {
    window.tripwire.apply(window, arguments);
  }

  function cart() {
    try {
      return JSON.parse(localStorage.getItem("shop_cart")) || [];
    } catch (e) {
      return [];
    }
  }

  function saveCart(items) {
    localStorage.setItem("shop_cart", JSON.stringify(items));
    updateCount();
  }

  function updateCount() {
    var count = document.getElementById("cart-count");
    if (count) count.textContent = String(cart().length);
  }

  function money(value) {
    return "$" + value.toFixed(2);
  }

  // -- pages -----------------------------------------------------------------------------

  function productPage(root) {
    var sku = root.getAttribute("data-sku");
    var item = CATALOG[sku];
    document.getElementById("art").textContent = item.art;
    document.getElementById("name").textContent = item.name;
    document.getElementById("blurb").textContent = item.blurb;
    document.getElementById("price").textContent = money(item.price);
    tw("track", "Product Viewed", {sku: sku, name: item.name, price: item.price});
    document.getElementById("add").addEventListener("click", function () {
      var items = cart();
      items.push(sku);
      saveCart(items);
      tw("track", "Product Added", {sku: sku, name: item.name, price: item.price});
      document.getElementById("added").hidden = false;
    });
  }

  function cartPage(root) {
    var body = root.querySelector("tbody");
    var items = cart();
    var total = 0;
    body.textContent = "";
    items.forEach(function (sku) {
      var item = CATALOG[sku];
      var row = document.createElement("tr");
      row.innerHTML = "<td></td><td class='price'></td>";
      row.children[0].textContent = item.art + " " + item.name;
      row.children[1].textContent = money(item.price);
      body.appendChild(row);
      total += item.price;
    });
    document.getElementById("total").textContent = money(total);
    document.getElementById("empty-cart").hidden = items.length > 0;
    document.getElementById("checkout").addEventListener("click", function () {
      if (!cart().length) return;
      tw("track", "Order Completed", {revenue: total, products: cart().length});
      saveCart([]);
      document.getElementById("ordered").hidden = false;
    });
  }

  function signupPage(form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var email = form.elements.email.value.trim();
      var traits = {email: email, name: form.elements.name.value.trim(), plan: form.elements.plan.value};
      // The shop's server makes the member's id and signs it (identity verification): the
      // tag sends the signature with every event, so nobody else can claim this member.
      fetch("/api/signup", {method: "POST"}).then(function (r) { return r.json(); }).then(function (member) {
        tw("identify", member.userId, traits, member.userHash);
        tw("track", "Signed Up", {plan: traits.plan});
        document.getElementById("welcome").hidden = false;
        document.getElementById("welcome-name").textContent = traits.name || email;
      });
    });
  }

  // A single-page app: tabs change the URL with pushState; the tag counts each as a page view.
  function accountApp(root) {
    var views = {
      "/app": "Your orders: nothing yet. Your first bag of beans is one click away.",
      "/app/wishlist": "Your wishlist: the Burr Grinder, of course.",
      "/app/settings": "Settings: newsletter on, dark roast preferred."
    };
    var titles = {"/app": "Orders", "/app/wishlist": "Wishlist", "/app/settings": "Settings"};

    function render() {
      var path = location.pathname.replace(/\/$/, "") || "/app";
      if (!views[path]) path = "/app";
      document.getElementById("view").textContent = views[path];
      root.querySelectorAll(".tabs a").forEach(function (a) {
        a.className = a.getAttribute("href") === path ? "active" : "";
      });
    }

    root.querySelector(".tabs").addEventListener("click", function (e) {
      var link = e.target.closest("a");
      if (!link) return;
      e.preventDefault();
      var path = link.getAttribute("href");
      document.title = titles[path] + " \u00b7 Roastery";
      history.pushState({}, "", path);
      render();
    });
    window.addEventListener("popstate", render);
    render();
  }

  // -- the live webhook panel --------------------------------------------------------------

  function collectorOrigin() {
    var script = document.querySelector("script[src$='/tag.js']");
    return script ? new URL(script.src).origin : "";
  }

  // The tag's visitor id (kept in localStorage, else its cookie), read when each webhook
  // arrives: the bin holds every visitor's webhooks, the panel shows this visitor's.
  function visitorId() {
    try {
      var id = localStorage.getItem("tw_aid");
      if (id) return id;
    } catch (e) {}
    var cookie = document.cookie.match(/(?:^|; )tw_aid=([^;]+)/);
    return cookie ? cookie[1] : "";
  }

  function sentTo(hook, visitor) {
    return hook.headers.some(function (header) {
      return header[0].toLowerCase() === "x-demo-visitor" && header[1] === visitor;
    });
  }

  function webhookPanel() {
    var origin = collectorOrigin();
    if (!origin || !window.EventSource) return;
    var panel = document.createElement("aside");
    panel.id = "webhook-panel";
    panel.innerHTML =
      "<header><span class='dot'></span><strong>Your webhooks, sent by Tripwire</strong>" +
      "<a target='_blank' rel='noopener'>request bin \u2197</a></header>" +
      "<div class='empty'>None yet. Open the cart twice, or sign up.</div><ol></ol>" +
      "<div class='others' hidden></div>";
    panel.querySelector("a").href = origin + "/bin/demo/view";
    panel.querySelector("strong").addEventListener("click", function () {
      panel.classList.toggle("collapsed");
    });
    document.body.appendChild(panel);
    var list = panel.querySelector("ol");
    var dot = panel.querySelector(".dot");
    var others = panel.querySelector(".others");
    var hidden = 0;
    var source = new EventSource(origin + "/bin/demo/stream");
    source.onopen = function () {
      dot.className = "dot live";
    };
    source.onerror = function () {
      dot.className = "dot";
    };
    source.addEventListener("request", function (e) {
      var hook = JSON.parse(e.data);
      if (!sentTo(hook, visitorId())) {
        others.hidden = false;
        others.textContent = ++hidden + " more for other visitors, in the request bin";
        return;
      }
      var item = document.createElement("li");
      item.className = "hook";
      item.innerHTML = "<div class='hook-title'><b></b><code></code><time></time></div><pre></pre>";
      item.querySelector("b").textContent = hook.method;
      item.querySelector("code").textContent = hook.path.replace(/^\/bin\/demo\/?/, "") || "/";
      item.querySelector("time").textContent = new Date(hook.at * 1000).toLocaleTimeString();
      var body = hook.body;
      try {
        body = JSON.stringify(JSON.parse(body), null, 1);
      } catch (err) {}
      item.querySelector("pre").textContent = body || hook.query;
      list.insertBefore(item, list.firstChild);
      panel.querySelector(".empty").hidden = true;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    updateCount();
    var product = document.querySelector("[data-sku]");
    if (product) productPage(product);
    var cartRoot = document.getElementById("cart");
    if (cartRoot) cartPage(cartRoot);
    var form = document.querySelector("form.signup");
    if (form) signupPage(form);
    var app = document.getElementById("account-app");
    if (app) accountApp(app);
    webhookPanel();
  });
})();
