// Live view of one request bin: Server-Sent Events from /bin/{name}/stream, newest on top.
(function () {
  "use strict";
  var list = document.getElementById("requests");
  var empty = document.getElementById("empty");
  var status = document.getElementById("status");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  function bodyText(req) {
    if (req.body_base64) return "(binary, " + req.body_size + " bytes, base64)\n" + req.body;
    try {
      return JSON.stringify(JSON.parse(req.body), null, 2);
    } catch (e) {
      return req.body;
    }
  }

  function show(req) {
    var item = el("li", "flash");
    item.dataset.id = req.id;
    var head = el("div", "head");
    head.appendChild(el("span", "method", req.method));
    head.appendChild(el("code", "", req.path + (req.query ? "?" + req.query : "")));
    head.appendChild(el("span", "when", new Date(req.at * 1000).toLocaleTimeString()));
    item.appendChild(head);
    if (req.body) item.appendChild(el("pre", "body", bodyText(req) + (req.truncated ? "\n…(truncated)" : "")));
    var details = el("details");
    details.appendChild(el("summary", "", req.headers.length + " headers"));
    var table = el("table", "small");
    req.headers.forEach(function (pair) {
      var row = el("tr");
      row.appendChild(el("td", "mono", pair[0]));
      row.appendChild(el("td", "mono", pair[1]));
      table.appendChild(row);
    });
    details.appendChild(table);
    item.appendChild(details);
    list.insertBefore(item, list.firstChild);
    empty.hidden = true;
  }

  var source = new EventSource(list.dataset.stream);
  source.addEventListener("open", function () {
    status.textContent = "live";
    status.className = "badge fired";
  });
  source.addEventListener("error", function () {
    status.textContent = "reconnecting…";
    status.className = "badge paused";
  });
  source.addEventListener("request", function (e) {
    show(JSON.parse(e.data));
  });
})();
