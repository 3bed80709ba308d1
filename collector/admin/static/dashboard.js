// The dashboard's few scripts: confirmations, and the live events table (Server-Sent Events).
(function () {
  "use strict";

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      if (!window.confirm(form.getAttribute("data-confirm"))) e.preventDefault();
    });
  });

  var table = document.getElementById("events");
  if (!table || !window.EventSource) return;
  var body = table.querySelector("tbody");
  var empty = document.getElementById("no-events");
  var status = document.getElementById("live-status");
  var KEEP = 200;
  var seen = {}; // messageIds shown: a reconnect replays the backlog

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : text;
    row.appendChild(td);
    return td;
  }

  function show(message, fresh) {
    if (seen[message.messageId]) return;
    seen[message.messageId] = true;
    var row = document.createElement("tr");
    if (fresh) row.className = "flash";
    var page = (message.context && message.context.page) || {};
    cell(row, new Date((message.timestamp || message.receivedAt) * 1000).toLocaleTimeString(), "small");
    cell(row, message.type);
    cell(row, message.event || message.name || "");
    var who = message.userId || message.anonymousId || "";
    var link = document.createElement("a");
    link.href = "/admin/users?id=" + encodeURIComponent(who);
    link.textContent = message.userId ? message.userId : "anon " + who.slice(0, 8);
    cell(row, "", "small").appendChild(link);
    cell(row, page.path || "", "mono");
    var props = message.type === "identify" ? message.traits : message.properties;
    cell(row, props && Object.keys(props).length ? JSON.stringify(props) : "", "mono small");
    body.insertBefore(row, body.firstChild);
    while (body.children.length > KEEP) body.removeChild(body.lastChild);
    empty.hidden = true;
  }

  var source = new EventSource(table.getAttribute("data-stream"));
  source.addEventListener("open", function () {
    status.textContent = "live";
    status.className = "badge fired";
  });
  source.addEventListener("error", function () {
    status.textContent = "reconnecting…";
    status.className = "badge paused";
  });
  source.addEventListener("backlog", function (e) {
    show(JSON.parse(e.data), false);
  });
  source.addEventListener("event", function (e) {
    show(JSON.parse(e.data), true);
  });
})();
