// The builders: the campaign form (with its condition builder, placeholder picker, reach and
// dry run), the variable and segment forms, and the campaign page's tabs. The server embeds the
// document and what the pickers offer as JSON; this turns it into fields and back.
(function () {
  "use strict";

  var uid = 0;
  var KINDS = ["trait", "var", "prop", "context", "event_count", "segment"];
  var KIND_LABELS = {trait: "Trait", "var": "Variable", prop: "Event property",
    context: "Page or context", event_count: "Times the event happened", segment: "In segment"};
  var OPS = ["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "contains",
    "not_contains", "starts_with", "ends_with", "regex", "exists", "within", "older_than"];
  var DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

  function nid(prefix) { uid += 1; return prefix + "-" + uid; }
  function $(id) { return document.getElementById(id); }
  function readData(id) { var n = $(id); return n ? JSON.parse(n.textContent) : null; }
  function clone(v) { return v === undefined ? undefined : JSON.parse(JSON.stringify(v)); }
  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }

  function make(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") { if (attrs[k]) node.className = attrs[k]; }
      else if (attrs[k] !== undefined && attrs[k] !== null && attrs[k] !== false) node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function options(select, values, labels, keep) {
    var current = keep === undefined ? select.value : keep;
    select.textContent = "";
    values.forEach(function (v) {
      select.appendChild(make("option", {value: v, text: labels && labels[v] ? labels[v] : v}));
    });
    if (values.indexOf(current) >= 0) select.value = current;
  }
  function fillList(list, values) {
    list.textContent = "";
    values.forEach(function (v) { list.appendChild(make("option", {value: v})); });
  }
  // A control with its own label (visually hidden when `hidden` is true).
  function labelled(text, control, hidden, cls) {
    if (!control.id) control.id = nid("c");
    return make("div", {className: cls || "part"}, [
      make("label", {"for": control.id, className: hidden ? "sr" : "", text: text}), control]);
  }
  function button(text, label, cls) {
    return make("button", {type: "button", text: text, "aria-label": label || null, className: cls || null});
  }

  function getPath(obj, path) {
    return path.split(".").reduce(function (o, k) { return isObj(o) ? o[k] : undefined; }, obj);
  }
  function setPath(obj, path, value) {
    var keys = path.split("."), last = keys.pop(), trail = [obj], o = obj;
    keys.forEach(function (k) { if (!isObj(o[k])) o[k] = {}; o = o[k]; trail.push(o); });
    if (value === undefined || value === null || value === "") delete o[last];
    else o[last] = value;
    for (var i = keys.length - 1; i >= 0; i--) {
      if (Object.keys(trail[i + 1]).length === 0) delete trail[i][keys[i]];
      else break;
    }
  }

  function post(url, data) {
    return fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)})
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, data: j}; }); });
  }
  function getJSON(url) {
    return fetch(url, {credentials: "same-origin"})
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, data: j}; }); });
  }
  function problemsOf(answer) {
    return answer.data.problems || [answer.data.detail || "something went wrong"];
  }

  // -- values typed in a field ------------------------------------------------------------

  function coerce(text, type) {
    var t = text.trim();
    if (type === "string") return text;
    if ((type === "number" || type === "count" || type === "any") && t !== "" && !isNaN(Number(t))) return Number(t);
    if ((type === "boolean" || type === "any") && (t === "true" || t === "false")) return t === "true";
    return text;
  }
  function shown(v) {
    if (Array.isArray(v)) return v.map(shown).join(", ");
    return v === undefined || v === null ? "" : String(v);
  }

  // -- the condition builder --------------------------------------------------------------

  function classify(raw) {
    if (!isObj(raw)) return "raw";
    var keys = Object.keys(raw);
    if (keys.length === 1 && (keys[0] === "all" || keys[0] === "any") && Array.isArray(raw[keys[0]])) return "group";
    if (keys.length === 1 && keys[0] === "not") return "not";
    var kinds = keys.filter(function (k) { return KINDS.indexOf(k) >= 0; });
    var ops = keys.filter(function (k) { return OPS.indexOf(k) >= 0; });
    var other = keys.filter(function (k) { return KINDS.indexOf(k) < 0 && OPS.indexOf(k) < 0 && k !== "window"; });
    if (kinds.length === 1 && !other.length && (ops.length === 1 || (kinds[0] === "segment" && !ops.length))) return "leaf";
    return "raw";
  }

  // ctx: {vocab, event: function () {name of the event the condition is about, or ""}}
  function Conditions(container, raw, ctx) {
    this.container = container;
    this.ctx = ctx;
    container.textContent = "";
    var single = raw && classify(raw) !== "group";
    this.root = buildNode(raw ? (single ? {all: [raw]} : raw) : {all: []}, ctx, true);
    this.unwrap = !!single;
    container.appendChild(this.root.el);
  }
  Conditions.prototype.value = function (path) {
    var items = this.root.items();
    if (!items.length) { this.root.el.setAttribute("data-path", path); return undefined; }
    if (items.length === 1 && !this.root.negated() && this.root.mode() === "all") {
      this.root.el.setAttribute("data-path", path + "-group");
      return items[0].get(path);
    }
    return this.root.get(path);
  };

  function buildNode(raw, ctx, root) {
    var negate = false;
    if (classify(raw) === "not" && classify(raw.not) !== "not") { negate = true; raw = raw.not; }
    var kind = classify(raw);
    if (kind === "group") return buildGroup(raw, ctx, negate, root);
    if (kind === "leaf") return buildLeaf(raw, ctx, negate);
    return buildRaw(negate ? {not: raw} : raw);
  }

  function notBox(checked, text) {
    var box = make("input", {type: "checkbox"});
    box.checked = checked;
    box.id = nid("not");
    return {box: box, el: make("label", {className: "check", "for": box.id}, [box, document.createTextNode(text || "not")])};
  }

  function buildGroup(raw, ctx, negate, root) {
    var mode = raw.all ? "all" : "any";
    var el = make("div", {className: "group" + (root ? " root" : ""), role: "group"});
    var select = make("select", {});
    options(select, ["all", "any"], {all: "all of these are true", any: "any of these is true"});
    select.value = mode;
    var not = notBox(negate, "not (the whole group)");
    var list = make("div", {className: "items"});
    var addLeaf = button("Add a condition");
    var addGroup = button("Add a group");
    var head = make("div", {className: "group-head"}, [labelled("Match when", select, false, "part inline"), not.el]);
    el.appendChild(head);
    el.appendChild(list);
    el.appendChild(make("div", {className: "row group-foot"}, [addLeaf, addGroup]));
    var children = [];
    function add(node) {
      children.push(node);
      list.appendChild(node.el);
      if (node.removeButton) node.removeButton.addEventListener("click", function () {
        children.splice(children.indexOf(node), 1);
        list.removeChild(node.el);
        addLeaf.focus();
      });
    }
    (raw[mode] || []).forEach(function (item) { add(buildNode(item, ctx, false)); });
    addLeaf.addEventListener("click", function () {
      var node = buildLeaf({trait: "", eq: ""}, ctx, false);
      add(node);
      node.focus();
    });
    addGroup.addEventListener("click", function () {
      var node = buildGroup({all: [{trait: "", eq: ""}]}, ctx, false, false);
      add(node);
      node.focus();
    });
    var node = {
      el: el,
      items: function () { return children.filter(function (c) { return !c.empty || !c.empty(); }); },
      mode: function () { return select.value; },
      negated: function () { return not.box.checked; },
      focus: function () { select.focus(); },
      get: function (path) {
        var m = select.value, inner = path + (not.box.checked ? ".not" : "");
        el.setAttribute("data-path", inner);
        var items = node.items().map(function (c, i) { return c.get(inner + "." + m + "[" + i + "]"); });
        var value = {};
        value[m] = items;
        return not.box.checked ? {not: value} : value;
      }
    };
    if (!root) {
      node.removeButton = button("Remove group", null, "danger");
      head.appendChild(node.removeButton);
    }
    return node;
  }

  function nameChoices(kind, ctx) {
    var v = ctx.vocab;
    if (kind === "trait") return Object.keys(v.traits);
    if (kind === "var") return Object.keys(v.variables);
    if (kind === "segment") return v.segments;
    if (kind === "event_count") return Object.keys(v.events);
    if (kind === "context") return v.context;
    var ev = ctx.event(), found = {};
    Object.keys(v.events).forEach(function (e) {
      if (!ev || e === ev) Object.keys(v.events[e]).forEach(function (p) { found[p] = true; });
    });
    return Object.keys(found).sort();
  }
  function typeOf(kind, name, ctx) {
    var v = ctx.vocab;
    if (kind === "trait") return v.traits[name] || "any";
    if (kind === "var") return (v.variables[name] || {}).type || "any";
    if (kind === "event_count") return "count";
    if (kind === "context") return "string";
    if (kind === "segment") return "segment";
    var ev = ctx.event(), props = (ev && v.events[ev]) || {};
    return props[name] || "any";
  }

  function buildLeaf(raw, ctx, negate) {
    var kind = KINDS.filter(function (k) { return k in raw; })[0];
    var op = OPS.filter(function (k) { return k in raw; })[0] || (kind === "segment" ? "member" : "eq");
    var value = op === "member" ? true : raw[op];
    var el = make("div", {className: "leaf"});
    var not = notBox(negate);
    var kindSel = make("select", {});
    options(kindSel, KINDS, KIND_LABELS);
    kindSel.value = kind;
    var list = make("datalist", {id: nid("dl")});
    var name = make("input", {type: "text", list: list.id, autocomplete: "off", spellcheck: "false", "data-role": "name"});
    name.value = raw[kind] || "";
    var segSel = make("select", {});
    var windowIn = make("input", {type: "text", list: "dl-windows", placeholder: "7d", "data-role": "window"});
    windowIn.value = raw.window || "";
    var opSel = make("select", {});
    var valueBox = make("div", {className: "part values"});
    var remove = button("Remove", "Remove this condition", "danger");
    var parts = {
      name: labelled("Name", name, true), seg: labelled("Segment", segSel, true),
      window: labelled("Within (window)", windowIn, true), op: labelled("Operator", opSel, true)
    };
    [not.el, labelled("Compare", kindSel, true), parts.name, parts.seg, parts.window, parts.op,
      valueBox, remove, list].forEach(function (n) { el.appendChild(n); });
    var inputs = [];

    function renderValue() {
      valueBox.textContent = "";
      inputs = [];
      var o = opSel.value, t = typeOf(kindSel.value, name.value, ctx);
      if (kindSel.value === "segment") return;
      if (o === "exists") {
        var s = make("select", {"data-role": "value"});
        options(s, ["true", "false"], {"true": "yes", "false": "no"});
        s.value = value === false ? "false" : "true";
        inputs.push(s);
        valueBox.appendChild(labelled("Exists", s, true));
        return;
      }
      var count = o === "between" ? 2 : 1;
      for (var i = 0; i < count; i++) {
        var inp = make("input", {type: "text", spellcheck: "false", "data-role": "value",
          inputmode: (t === "number" || t === "count") && o !== "in" && o !== "not_in" ? "decimal" : null,
          placeholder: o === "in" || o === "not_in" ? "a, b, c" : (o === "within" || o === "older_than" ? "7d" : "")});
        inp.value = o === "between" ? shown(Array.isArray(value) ? value[i] : "") : shown(value);
        inputs.push(inp);
        valueBox.appendChild(labelled(o === "between" ? (i ? "Up to" : "From") : "Value", inp, true));
      }
    }
    function refresh(keepValue) {
      var k = kindSel.value;
      fillList(list, nameChoices(k, ctx));
      parts.name.hidden = k === "segment";
      parts.seg.hidden = k !== "segment";
      parts.window.hidden = k !== "event_count";
      parts.op.hidden = k === "segment";
      if (k === "segment") { options(segSel, ctx.vocab.segments, null, name.value || segSel.value); }
      var type = typeOf(k, name.value, ctx);
      var allowed = ctx.vocab.operators[type] || ctx.vocab.operators.any;
      options(opSel, allowed, ctx.vocab.labels, allowed.indexOf(op) >= 0 ? op : allowed[0]);
      if (!keepValue) value = "";
      renderValue();
    }
    kindSel.addEventListener("change", function () { name.value = ""; refresh(false); });
    name.addEventListener("change", function () { collectValue(); refresh(true); });
    opSel.addEventListener("change", function () { collectValue(); op = opSel.value; renderValue(); });
    function collectValue() {
      var o = opSel.value, t = typeOf(kindSel.value, name.value, ctx);
      if (!inputs.length) return value;
      if (o === "exists") value = inputs[0].value === "true";
      else if (o === "between") value = inputs.map(function (i) { return coerce(i.value, t); });
      else if (o === "in" || o === "not_in") {
        value = inputs[0].value.split(",").map(function (s) { return s.trim(); })
          .filter(function (s) { return s !== ""; }).map(function (s) { return coerce(s, t); });
      } else if (o === "within" || o === "older_than" || o === "regex") value = inputs[0].value.trim();
      else value = coerce(inputs[0].value, t);
      return value;
    }
    refresh(true);
    return {
      el: el, removeButton: remove,
      focus: function () { kindSel.focus(); },
      empty: function () { return kindSel.value !== "segment" && !name.value.trim(); },
      get: function (path) {
        var k = kindSel.value, out = {};
        el.setAttribute("data-path", path + (not.box.checked ? ".not" : ""));
        out[k] = k === "segment" ? segSel.value : name.value.trim();
        if (k !== "segment") {
          op = opSel.value;
          out[op] = collectValue();
          if (k === "event_count" && windowIn.value.trim()) out.window = windowIn.value.trim();
        }
        return not.box.checked ? {not: out} : out;
      }
    };
  }

  function buildRaw(raw) {
    var area = make("textarea", {rows: "3", spellcheck: "false"});
    area.value = JSON.stringify(raw);
    var el = make("div", {className: "leaf raw"}, [labelled("Condition (JSON)", area, false)]);
    var remove = button("Remove", "Remove this condition", "danger");
    el.appendChild(remove);
    return {el: el, removeButton: remove, focus: function () { area.focus(); },
      get: function (path) {
        el.setAttribute("data-path", path);
        try { return JSON.parse(area.value); } catch (e) { return area.value; }
      }};
  }

  // -- the webhook action editor, with the placeholder picker ------------------------------

  function placeholderGroups(ctx) {
    var v = ctx.vocab, ev = ctx.event(), props = {};
    Object.keys(v.events).forEach(function (e) {
      if (!ev || e === ev) Object.keys(v.events[e]).forEach(function (p) { props["properties." + p] = true; });
    });
    return [
      ["User traits", Object.keys(v.traits).map(function (t) { return "traits." + t; })],
      ["Variables", Object.keys(v.variables)],
      ["Built-ins", v.builtins],
      ["Event properties", Object.keys(props).sort()],
      ["Page", v.page]
    ];
  }

  function ActionEditor(container, raw, ctx) {
    raw = isObj(raw) ? raw : {};
    container.textContent = "";
    this.container = container;
    var url = make("input", {type: "text", inputmode: "url", spellcheck: "false",
      placeholder: "https://example.com/hooks/tripwire"});
    url.value = raw.url || "";
    var method = make("select", {});
    options(method, ["POST", "GET", "PUT", "PATCH", "DELETE"]);
    method.value = raw.method || "POST";
    var urlPart = labelled("URL", url, false, "field wide");
    urlPart.setAttribute("data-path-suffix", "url");
    var methodPart = labelled("Method", method, false, "field");
    methodPart.setAttribute("data-path-suffix", "method");
    container.appendChild(make("div", {className: "fields"}, [urlPart, methodPart]));
    var last = null;  // the text field a placeholder goes into
    container.addEventListener("focusin", function (e) {
      if (e.target.tagName === "INPUT" && e.target.type === "text" && e.target.getAttribute("data-template")) last = e.target;
    });
    url.setAttribute("data-template", "1");

    function rows(title, entries, keyLabel, valueLabel, addText, suffix) {
      var box = make("div", {className: "pairs", "data-path-suffix": suffix});
      var heading = make("h4", {text: title});
      var list = make("div", {});
      var add = button(addText);
      box.appendChild(heading); box.appendChild(list); box.appendChild(add);
      var items = [];
      function addRow(k, v) {
        var key = make("input", {type: "text", spellcheck: "false"});
        var val = make("input", {type: "text", spellcheck: "false", "data-template": "1"});
        key.value = k; val.value = shown(v);
        var kind = typeof v;
        var remove = button("Remove", "Remove " + keyLabel.toLowerCase(), "danger");
        var row = make("div", {className: "pair"}, [labelled(keyLabel, key, false), labelled(valueLabel, val, false), remove]);
        var item = {row: row, key: key, val: val, kind: kind};
        items.push(item);
        list.appendChild(row);
        remove.addEventListener("click", function () {
          items.splice(items.indexOf(item), 1); list.removeChild(row); add.focus();
        });
        return item;
      }
      Object.keys(entries || {}).forEach(function (k) { addRow(k, entries[k]); });
      add.addEventListener("click", function () { addRow("", "").key.focus(); });
      return {el: box, items: items, addRow: addRow, get: function (path) {
        box.setAttribute("data-path", path);
        var out = {};
        items.forEach(function (i) {
          var k = i.key.value.trim();
          if (!k) return;
          var text = i.val.value;
          out[k] = i.kind === "number" && text.trim() !== "" && !isNaN(Number(text)) ? Number(text)
            : i.kind === "boolean" && (text === "true" || text === "false") ? text === "true" : text;
        });
        return Object.keys(out).length ? out : undefined;
      }};
    }
    var headers = rows("Headers", raw.headers, "Header", "Value", "Add a header", "headers");
    container.appendChild(headers.el);
    var flat = raw.body === undefined || raw.body === null || (isObj(raw.body) &&
      Object.keys(raw.body).every(function (k) { return !isObj(raw.body[k]) && !Array.isArray(raw.body[k]); }));
    var body, bodyArea;
    if (flat) {
      body = rows("Body", raw.body, "Field", "Value", "Add a body field", "body");
      container.appendChild(body.el);
    } else {
      bodyArea = make("textarea", {rows: "6", spellcheck: "false"});
      bodyArea.value = JSON.stringify(raw.body, null, 2);
      var part = labelled("Body (JSON)", bodyArea, false, "field wide");
      part.setAttribute("data-path-suffix", "body");
      container.appendChild(part);
    }
    var picker = make("select", {});
    this.refresh = function () {  // the trigger's event decides which properties are offered
      var keep = picker.value;
      picker.textContent = "";
      placeholderGroups(ctx).forEach(function (g) {
        if (!g[1].length) return;
        var group = make("optgroup", {label: g[0]});
        g[1].forEach(function (n) { group.appendChild(make("option", {value: n, text: "#{" + n + "}"})); });
        picker.appendChild(group);
      });
      if (keep) picker.value = keep;
      if (!picker.value && picker.options.length) picker.selectedIndex = 0;
    };
    this.refresh();
    var insert = button("Insert placeholder");
    var hint = make("p", {className: "hint", id: nid("hint"),
      text: "Goes where the cursor was last, in the URL, a header or a body value. A body value " +
        "that is just one placeholder keeps its type; #{name|fallback} gives a fallback."});
    insert.setAttribute("aria-describedby", hint.id);
    container.appendChild(make("div", {className: "row picker"}, [labelled("Placeholder", picker, false, "part"), insert]));
    container.appendChild(hint);
    insert.addEventListener("click", function () {
      var target = last;
      if (!target && body) {
        var item = body.items[body.items.length - 1] || body.addRow(picker.value.split(".").pop(), "");
        target = item.val;
      }
      if (!target) target = url;
      var text = "#{" + picker.value + "}", at = target.selectionStart == null ? target.value.length : target.selectionStart;
      var end = target.selectionEnd == null ? at : target.selectionEnd;
      target.value = target.value.slice(0, at) + text + target.value.slice(end);
      target.focus();
      target.setSelectionRange(at + text.length, at + text.length);
      last = target;
    });
    this.get = function (path) {
      container.setAttribute("data-path", path);
      Array.prototype.forEach.call(container.querySelectorAll("[data-path-suffix]"), function (n) {
        n.setAttribute("data-path", path + "." + n.getAttribute("data-path-suffix"));
      });
      var out = clone(raw);
      out.url = url.value.trim();
      out.method = method.value;
      var h = headers.get(path + ".headers");
      if (h) out.headers = h; else delete out.headers;
      var b;
      if (body) b = body.get(path + ".body");
      else { try { b = JSON.parse(bodyArea.value); } catch (e) { b = bodyArea.value; } }
      if (b === undefined) delete out.body; else out.body = b;
      return out;
    };
  }

  // -- problems next to their fields ------------------------------------------------------

  function placeProblems(form, problems, top) {
    Array.prototype.forEach.call(form.querySelectorAll(".field-error"), function (n) { n.remove(); });
    var placed = [];
    var nodes = Array.prototype.slice.call(form.querySelectorAll("[data-path]"));
    (problems || []).forEach(function (problem) {
      var cut = problem.indexOf(": "), path = cut > 0 ? problem.slice(0, cut) : "", text = cut > 0 ? problem.slice(cut + 2) : problem;
      var best = null;
      nodes.forEach(function (n) {
        var p = n.getAttribute("data-path");
        if (!p || n.closest("[hidden]")) return;
        if (path === p || path.indexOf(p + ".") === 0 || path.indexOf(p + "[") === 0) {
          if (!best || p.length > best.getAttribute("data-path").length) best = n;
        }
      });
      if (!best) { if (top) placed.push(problem); return; }
      var holder = best.closest(".field, .leaf, .pair, .part, .pairs, .group, .variant") || best;
      var note = make("p", {className: "field-error", id: nid("err"), text: text});
      if (holder.classList.contains("group")) holder.insertBefore(note, holder.children[1] || null);
      else holder.appendChild(note);
      var control = best.matches("input, select, textarea") ? best : null;
      if (!control && holder.classList.contains("leaf")) {  // the part of the condition it is about
        var rest = path.slice(best.getAttribute("data-path").length);
        var role = /^\.(trait|var|prop|context|event_count|segment)$/.test(rest) ? "name" : rest === ".window" ? "window" : "value";
        control = holder.querySelector("[data-role=" + role + "]") || holder.querySelector("[data-role=name]");
      }
      if (!control) control = holder.querySelector("input, select, textarea");
      if (control) {
        control.setAttribute("aria-invalid", "true");
        control.setAttribute("aria-describedby", ((control.getAttribute("aria-describedby") || "") + " " + note.id).trim());
      }
      placed.push(null);
    });
    var first = form.querySelector("[aria-invalid=true]");
    if (first) first.focus();
  }

  // -- the campaign form ------------------------------------------------------------------

  function campaignForm() {
    var form = $("builder"), data = readData("builder-data");
    if (!form || !data) return;
    $("builder-nojs").hidden = true;
    form.hidden = false;
    $("campaign-tabs").hidden = false;
    var vocab = data.vocabulary;
    var doc = data.campaign || {};
    var trigger, where, action, variants = [];
    var ctx = {vocab: vocab, event: function () {
      var k = $("f-trigger-kind").value;
      return k === "event" ? $("f-trigger-event").value.trim() : k === "absence" ? $("f-trigger-after").value.trim() : k === "page" ? "page" : "";
    }};
    fillList($("dl-events"), Object.keys(vocab.events));
    fillList($("dl-users"), vocab.users);
    if (!$("dl-windows")) document.body.appendChild(make("datalist", {id: "dl-windows"}));
    fillList($("dl-windows"), vocab.windows);
    options($("f-trigger-segment"), vocab.segments);

    function simple() { return Array.prototype.slice.call(form.querySelectorAll("input[data-path], select[data-path]")); }

    function load(d) {
      doc = d || {};
      simple().forEach(function (input) {
        var path = input.getAttribute("data-path"), v = getPath(doc, path);
        if (input.type === "checkbox") input.checked = path === "spacing" ? v !== false : !!v;
        else if (input.type === "datetime-local") input.value = typeof v === "string" ? v.slice(0, 16) : "";
        else if (path === "schedule.hours") input.value = typeof v === "string" ? v.split("-")[0].replace("24:00", "23:59") : "";
        else input.value = v === undefined || v === null ? "" : String(v);
        if (input.tagName === "SELECT" && input.selectedIndex < 0) input.selectedIndex = 0;
      });
      if (doc.rate === undefined) $("f-rate").value = "100";
      var hours = getPath(doc, "schedule.hours");
      $("f-hours-to").value = typeof hours === "string" ? hours.split("-")[1].replace("24:00", "23:59") : "";
      $("f-id").readOnly = !data.new;
      trigger = doc.trigger;
      var kind = !isObj(trigger) ? "page" : trigger.segment_entered ? "segment" : trigger.after ? "absence" :
        (!trigger.event && !trigger.where) ? "page" : "event";
      $("f-trigger-kind").value = kind;
      if (kind === "event" && !trigger.event) $("f-trigger-event").value = "page";
      where = new Conditions($("f-trigger-where"), isObj(trigger) ? trigger.where : null, ctx);
      var segs = $("f-segments"), chosen = getPath(doc, "target.segments") || [];
      segs.textContent = "";
      vocab.segments.concat(chosen.filter(function (s) { return vocab.segments.indexOf(s) < 0; })).forEach(function (s) {
        var box = make("input", {type: "checkbox", value: s, id: nid("seg")});
        box.checked = chosen.indexOf(s) >= 0;
        segs.appendChild(make("label", {className: "check", "for": box.id}, [box, document.createTextNode(s)]));
      });
      if (!vocab.segments.length) segs.appendChild(make("p", {className: "hint", text: "No segments yet: build one under Segments."}));
      var days = $("f-days"), on = getPath(doc, "schedule.days") || [];
      days.textContent = "";
      DAYS.forEach(function (d) {
        var box = make("input", {type: "checkbox", value: d, id: nid("day")});
        box.checked = on.indexOf(d) >= 0;
        days.appendChild(make("label", {className: "check", "for": box.id}, [box, document.createTextNode(d)]));
      });
      action = new ActionEditor($("f-action"), getPath(doc, "action.webhook") || {url: "", method: "POST"}, ctx);
      $("f-variants").textContent = "";
      variants = [];
      (Array.isArray(doc.variants) ? doc.variants : []).forEach(addVariant);
      $("f-mode").value = Array.isArray(doc.variants) ? "variants" : "single";
      sync();
    }

    function addVariant(v) {
      v = v || {id: "variant_" + (variants.length + 1), rate: 50, action: {webhook: {url: "", method: "POST"}}};
      var idIn = make("input", {type: "text", spellcheck: "false"});
      idIn.value = v.id || "";
      var rate = make("input", {type: "number", min: "0", max: "100", step: "any", inputmode: "decimal"});
      rate.value = v.rate === undefined ? "" : v.rate;
      var remove = button("Remove variant", null, "danger");
      var actionBox = make("div", {});
      var box = make("fieldset", {className: "variant"}, [make("legend", {text: "Variant"}),
        make("div", {className: "fields"}, [labelled("Variant id", idIn, false, "field"), labelled("Share of users (%)", rate, false, "field")]),
        actionBox, remove]);
      $("f-variants").appendChild(box);
      var item = {box: box, id: idIn, rate: rate, raw: v, action: new ActionEditor(actionBox, getPath(v, "action.webhook"), ctx)};
      variants.push(item);
      rate.addEventListener("input", sync);
      remove.addEventListener("click", function () {
        variants.splice(variants.indexOf(item), 1); box.remove(); sync(); $("f-add-variant").focus();
      });
      return item;
    }

    function sync() {
      var kind = $("f-trigger-kind").value, mode = $("f-mode").value;
      Array.prototype.forEach.call(form.querySelectorAll("[data-show]"), function (n) {
        n.hidden = n.getAttribute("data-show").split(" ").indexOf(kind) < 0;
      });
      Array.prototype.forEach.call(form.querySelectorAll("[data-mode]"), function (n) {
        n.hidden = n.getAttribute("data-mode") !== mode;
      });
      var used = mode === "variants" ? variants.reduce(function (s, v) { return s + (Number(v.rate.value) || 0); }, 0)
        : Number($("f-rate").value || 0);
      var control = Math.round((100 - used) * 100) / 100;
      $("f-control").textContent = control < 0 ? "the shares add up to more than 100 %" : control + " % of users get nothing (they are compared against)";
    }

    function collect() {
      var out = clone(doc) || {};
      simple().forEach(function (input) {
        var path = input.getAttribute("data-path");
        if (path.indexOf("trigger.") === 0 || path === "schedule.hours") return;
        if (input.type === "checkbox") {
          if (path === "spacing") setPath(out, path, input.checked ? (doc.spacing === true ? true : undefined) : false);
          else setPath(out, path, input.checked ? true : undefined);
        } else if (input.type === "number") {
          setPath(out, path, input.value === "" ? undefined : Number(input.value));
        } else if (input.type === "datetime-local") {
          var before = getPath(doc, path), zone = typeof before === "string" ? (before.match(/(Z|[+-]\d\d:\d\d)$/) || [""])[0] : "";
          setPath(out, path, input.value ? input.value.slice(0, 16) + ":00" + zone : undefined);
        } else setPath(out, path, input.value.trim() || undefined);
      });
      if (!$("f-priority").value && doc.priority === undefined) delete out.priority;
      var from = $("f-hours-from").value, to = $("f-hours-to").value;
      setPath(out, "schedule.hours", from || to ? (from || "00:00") + "-" + (!to || to === "23:59" ? "24:00" : to) : undefined);
      var days = Array.prototype.filter.call($("f-days").querySelectorAll("input"), function (b) { return b.checked; })
        .map(function (b) { return b.value; });
      setPath(out, "schedule.days", days.length ? days : undefined);
      var segs = Array.prototype.filter.call($("f-segments").querySelectorAll("input"), function (b) { return b.checked; })
        .map(function (b) { return b.value; });
      setPath(out, "target.segments", segs.length ? segs : undefined);
      if (getPath(out, "target.users") === "all" && !getPath(doc, "target.users")) setPath(out, "target.users", undefined);
      var kind = $("f-trigger-kind").value, t = {};
      var w = where.value("trigger.where");
      if (kind === "event") { t.event = $("f-trigger-event").value.trim(); if (w !== undefined) t.where = w; }
      if (kind === "segment") t.segment_entered = $("f-trigger-segment").value;
      if (kind === "absence") {
        t.after = $("f-trigger-after").value.trim();
        t.wait = $("f-trigger-wait").value.trim();
        if (w !== undefined) t.where = w;
        var unless = $("f-trigger-unless").value.trim();
        if (unless) t.unless = Object.assign(clone(getPath(doc, "trigger.unless")) || {}, {event: unless});
      }
      if (kind === "page") delete out.trigger; else out.trigger = t;
      if ($("f-mode").value === "variants") {
        delete out.rate; delete out.action;
        out.variants = variants.map(function (v, i) {
          v.box.setAttribute("data-path", "variants[" + i + "]");
          v.id.parentNode.setAttribute("data-path", "variants[" + i + "].id");
          v.rate.parentNode.setAttribute("data-path", "variants[" + i + "].rate");
          var item = clone(v.raw);
          item.id = v.id.value.trim();
          item.rate = v.rate.value === "" ? 0 : Number(v.rate.value);
          item.action = Object.assign(clone(v.raw.action) || {}, {webhook: v.action.get("variants[" + i + "].action.webhook")});
          return item;
        });
      } else {
        delete out.variants;
        out.action = Object.assign(clone(doc.action) || {}, {webhook: action.get("action.webhook")});
      }
      return out;
    }

    form.addEventListener("change", function (e) {
      if (e.target.id === "f-trigger-kind" || e.target.id === "f-mode") sync();
      if (/^f-trigger-(kind|event|after)$/.test(e.target.id)) {
        action.refresh();
        variants.forEach(function (v) { v.action.refresh(); });
      }
      if (e.target.id === "f-mode" && e.target.value === "variants" && !variants.length) { addVariant(); sync(); }
    });
    $("f-rate").addEventListener("input", sync);
    $("f-add-variant").addEventListener("click", function () { addVariant().id.focus(); sync(); });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var editor = $("editor");
      editor.querySelector("textarea").value = JSON.stringify(collect(), null, 2);
      editor.querySelector("input[name=origin]").value = "form";
      editor.submit();
    });
    form.addEventListener("input", function () { formDirty = true; });

    $("f-reach").addEventListener("click", function () {
      var out = $("f-reach-out"), d = collect();
      out.textContent = "Counting…";
      post("/admin/api/reach", {target: d.target || {}, test_mode: !!d.test_mode}).then(function (a) {
        out.textContent = a.ok ? a.data.summary : problemsOf(a).join("; ");
      });
    });

    $("dry-go").addEventListener("click", function () {
      var out = $("dry-out"), d = collect(), id = d.id || "", props = $("dry-props").value.trim(), payload;
      out.textContent = "";
      try { payload = {user: $("dry-user").value.trim(), campaign: d, properties: props ? JSON.parse(props) : undefined}; }
      catch (err) { out.appendChild(make("p", {className: "field-error", text: "Event properties: not valid JSON"})); return; }
      if (!id) { out.appendChild(make("p", {className: "field-error", text: "Give the campaign an id first."})); return; }
      if (!payload.user) { out.appendChild(make("p", {className: "field-error", text: "Name a user to dry-run for."})); $("dry-user").focus(); return; }
      out.appendChild(make("p", {className: "muted", text: "Checking…"}));
      post("/admin/api/campaigns/" + encodeURIComponent(id) + "/dry-run", payload).then(function (a) { showDryRun(out, a); });
    });

    // tabs: results, form, YAML (the form and the YAML carry each other's changes over)
    var formDirty = false, yamlDirty = false;
    var tabs = $("campaign-tabs"), source = $("source");
    source.addEventListener("input", function () { yamlDirty = true; });
    function show(name) {
      ["results", "form", "yaml"].forEach(function (n) {
        var tab = $("tab-" + n), panel = $("panel-" + n);
        if (!tab || !panel) return;
        tab.setAttribute("aria-selected", n === name ? "true" : "false");
        tab.tabIndex = n === name ? 0 : -1;
        panel.hidden = n !== name;
      });
      $("dry-run").hidden = name === "yaml";
    }
    function current() { return tabs.querySelector("[aria-selected=true]").id.slice(4); }
    function go(name) {
      var from = current();
      var yamlError = $("yaml-error");
      if (yamlError) yamlError.remove();
      if (from === "form" && name !== "form" && formDirty) {
        post("/admin/api/campaign-text", {campaign: collect()}).then(function (a) {
          if (a.ok) { source.value = a.data.yaml; formDirty = false; yamlDirty = false; }
        });
      }
      if (from === "yaml" && name !== "yaml" && yamlDirty) {
        post("/admin/api/campaign-text", {yaml: source.value}).then(function (a) {
          if (!a.ok) {
            var note = make("p", {className: "field-error", id: "yaml-error", role: "alert", text: problemsOf(a).join("; ")});
            source.parentNode.insertBefore(note, source.nextSibling);
            source.setAttribute("aria-describedby", "yaml-error");
            show("yaml"); source.focus();
            return;
          }
          if (!data.new) a.data.campaign.id = doc.id;
          load(a.data.campaign); yamlDirty = false; formDirty = false; show(name);
        });
        return;
      }
      show(name);
    }
    Array.prototype.forEach.call(tabs.querySelectorAll("[role=tab]"), function (tab, i, all) {
      tab.addEventListener("click", function () { go(tab.id.slice(4)); });
      tab.addEventListener("keydown", function (e) {
        var step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (!step) return;
        var next = all[(i + step + all.length) % all.length];
        next.focus(); go(next.id.slice(4));
      });
    });
    load(doc);
    show(tabs.getAttribute("data-open") || "form");
    if (data.origin === "form" && data.problems.length) {
      collect();  // gives the dynamic parts their paths
      placeProblems(form, data.problems);
    }
  }

  function showDryRun(out, a) {
    out.textContent = "";
    if (!a.ok) { out.appendChild(make("p", {className: "field-error", role: "alert", text: problemsOf(a).join("; ")})); return; }
    var r = a.data;
    out.appendChild(make("p", {className: "notice " + (r.would_fire || (r.failed.length === 1 && r.failed[0] === "status") ? "ok" : "error"),
      text: r.verdict}));
    var body = make("tbody", {});
    r.steps.forEach(function (s) {
      body.appendChild(make("tr", {"data-step": s.step}, [make("td", {text: s.step}),
        make("td", {}, [make("span", {className: "badge " + (s.outcome === "pass" ? "yes" : s.outcome === "fail" ? "no" : ""), text: s.outcome})]),
        make("td", {className: "small", text: s.detail})]));
    });
    out.appendChild(make("table", {className: "steps"}, [make("thead", {}, [make("tr", {}, [
      make("th", {text: "Step"}), make("th", {text: "Outcome"}), make("th", {text: "Why"})])]), body]));
    if (r.request) {
      var req = r.request;
      out.appendChild(make("h3", {text: "The request it would send"}));
      var lines = [req.method + " " + req.url].concat(Object.keys(req.headers).map(function (h) { return h + ": " + req.headers[h]; }));
      var text = lines.join("\n") + (req.body === null || req.body === undefined ? "" : "\n\n" + JSON.stringify(req.body, null, 2));
      out.appendChild(make("pre", {className: "request", id: "dry-request", text: text}));
    }
  }

  // -- variables and segments -------------------------------------------------------------

  function definitionForm() {
    var form = $("definition"), data = readData("definition-data");
    if (!form || !data) return;
    var vocab = data.vocabulary, kind = data.kind, raw = data.definition, box = $("definition-fields");
    var source = $("definition-source");
    fillList($("dl-events"), Object.keys(vocab.events));
    if (!$("dl-windows")) document.body.appendChild(make("datalist", {id: "dl-windows"}));
    fillList($("dl-windows"), vocab.windows);
    var nameIn = make("input", {type: "text", name: "name", spellcheck: "false", autocomplete: "off",
      "aria-describedby": "def-name-hint"});
    nameIn.value = data.name || "";
    nameIn.readOnly = !data["new"];
    var namePart = labelled("Name", nameIn, false, "field");
    namePart.appendChild(make("p", {className: "hint", id: "def-name-hint", text: "Letters, digits and _ . : -; campaigns use it by this name."}));
    box.appendChild(make("div", {className: "fields"}, [namePart]));
    var prefix = function () { return kind + "." + nameIn.value.trim(); };
    namePart.setAttribute("data-path", kind + ".name");
    var collect;
    if (kind === "segments") {
      var holder = make("div", {className: "conditions", id: "def-condition"});
      box.appendChild(make("h2", {text: "Users are in it when"}));
      box.appendChild(holder);
      var cond = new Conditions(holder, raw, {vocab: vocab, event: function () { return ""; }});
      var reachButton = button("Count reach"), reachOut = make("output", {className: "small", "aria-live": "polite", id: "def-reach"});
      box.appendChild(make("div", {className: "row spaced"}, [reachButton, reachOut]));
      reachButton.addEventListener("click", function () {
        reachOut.textContent = "Counting…";
        post("/admin/api/reach", {condition: cond.value("condition")}).then(function (a) {
          reachOut.textContent = a.ok ? a.data.summary : problemsOf(a).join("; ");
        });
      });
      collect = function () { return cond.value(prefix()) || {}; };
    } else {
      raw = isObj(raw) ? raw : {stat: "count", window: "all"};
      var ev = make("input", {type: "text", list: "dl-events", autocomplete: "off", "aria-describedby": "def-event-hint"});
      ev.value = Array.isArray(raw.event) ? raw.event.join(", ") : (raw.event || "");
      var stat = make("select", {});
      options(stat, vocab.stats);
      stat.value = raw.stat || "count";
      var field = make("input", {type: "text", list: "def-fields", autocomplete: "off", placeholder: "properties.revenue"});
      field.value = raw.field || "";
      var win = make("input", {type: "text", list: "dl-windows", autocomplete: "off", placeholder: "all"});
      win.value = raw.window || "";
      var def = make("input", {type: "text", placeholder: "0"});
      def.value = raw["default"] === undefined || raw["default"] === null ? "" : JSON.stringify(raw["default"]);
      var fieldsList = make("datalist", {id: "def-fields"});
      var parts = [["Counted from the event", ev, "event"], ["Statistic", stat, "stat"], ["Of the field", field, "field"],
        ["Over the window", win, "window"], ["Default (JSON)", def, "default"]].map(function (p) {
        var part = labelled(p[0], p[1], false, "field");
        part.setAttribute("data-suffix", p[2]);
        return part;
      });
      parts[0].appendChild(make("p", {className: "hint", id: "def-event-hint", text: "An event name, page or identify; several: comma-separated. " +
        "It is counted from the first event after a segment or campaign uses it."}));
      box.appendChild(make("div", {className: "fields"}, parts));
      box.appendChild(fieldsList);
      var filterBox = make("div", {className: "conditions", id: "def-where"});
      box.appendChild(make("h2", {text: "Only events where"}));
      box.appendChild(filterBox);
      var whereCtx = {vocab: vocab, event: function () { return ev.value.split(",")[0].trim(); }};
      var whereCond = new Conditions(filterBox, raw.where, whereCtx);
      var refreshFields = function () {
        var e = whereCtx.event(), props = (vocab.events[e] && Object.keys(vocab.events[e])) || [];
        fillList(fieldsList, props.map(function (p) { return "properties." + p; }).concat(vocab.page.map(function (p) { return "context." + p; })));
      };
      ev.addEventListener("change", refreshFields);
      refreshFields();
      collect = function () {
        var out = clone(raw), names = ev.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
        parts.forEach(function (p) { p.setAttribute("data-path", prefix() + "." + p.getAttribute("data-suffix")); });
        out.event = names.length > 1 ? names : (names[0] || "");
        out.stat = stat.value;
        setPath(out, "field", field.value.trim() || undefined);
        setPath(out, "window", win.value.trim() || undefined);
        if (def.value.trim()) { try { out["default"] = JSON.parse(def.value); } catch (e) { out["default"] = def.value; } }
        else delete out["default"];
        var w = whereCond.value(prefix() + ".where");
        if (w === undefined) delete out.where; else out.where = w;
        return out;
      };
    }
    form.addEventListener("submit", function () {
      if (!$("definition-yaml").open) source.value = JSON.stringify(collect(), null, 2);
    });
    if (data.problems && data.problems.length) { collect(); placeProblems(form, data.problems); }
  }

  // -- reach buttons on the segments list --------------------------------------------------

  function reachButtons() {
    Array.prototype.forEach.call(document.querySelectorAll("button.reach-button"), function (b) {
      b.addEventListener("click", function () {
        var out = b.parentNode.querySelector("output");
        out.textContent = "Counting…";
        getJSON("/admin/api/segments/" + encodeURIComponent(b.getAttribute("data-segment")) + "/reach").then(function (a) {
          out.textContent = a.ok ? a.data.summary : problemsOf(a).join("; ");
        });
      });
    });
  }

  campaignForm();
  definitionForm();
  reachButtons();
})();
