// The VoiceLab page: plain JS over the JSON API of voicelab.web.app. No libraries, no network
// beyond this server. Long work runs as a server job; the page polls /api/job.
"use strict";
(function () {
  var $ = function (sel) { return document.querySelector(sel); };
  var state = { ws: "", lang: "en", tab: "voice", segments: [], sel: -1, job: null, info: null };

  // ---- strings -----------------------------------------------------------------------------
  function t(key, vars) {
    var s = (STRINGS[state.lang] || STRINGS.en)[key];
    if (s === undefined) s = STRINGS.en[key] !== undefined ? STRINGS.en[key] : key;
    return String(s).replace(/\{(\w+)\}/g, function (_, k) { return vars && k in vars ? vars[k] : ""; });
  }
  function applyLang() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach(function (el) { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll("[data-i18n-ph]").forEach(function (el) { el.placeholder = t(el.dataset.i18nPh); });
    $("#lang").value = state.lang;
  }

  // ---- server calls --------------------------------------------------------------------------
  function showError(err) {
    var box = $("#error");
    if (!err) { box.hidden = true; box.textContent = ""; return; }
    box.hidden = false;
    box.textContent = err.line || String(err);
  }
  function api(method, path, body) {
    var opts = { method: method, headers: {} };
    if (body !== undefined) {
      body.ws = state.ws;
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return r.json().then(function (data) {
        if (!r.ok) { showError(data.error || { line: "error: HTTP " + r.status }); throw data; }
        return data;
      });
    });
  }
  function get(path, params) {
    var q = new URLSearchParams(params || {});
    q.set("ws", state.ws);
    return api("GET", path + "?" + q.toString());
  }
  function post(path, body) { showError(null); return api("POST", path, body || {}); }
  function fileUrl(rel) { return "/api/file?" + new URLSearchParams({ ws: state.ws, path: rel }); }
  function formData(form) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) return;
      if (el.type === "checkbox") out[el.name] = el.checked;
      else if (el.type === "number") out[el.name] = el.value === "" ? null : Number(el.value);
      else out[el.name] = el.value === "" ? null : el.value;
    });
    return out;
  }
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function fmt(x, d) { return x === null || x === undefined ? "-" : Number(x).toFixed(d === undefined ? 4 : d); }

  // ---- tabs ------------------------------------------------------------------------------------
  function showTab(name) {
    state.tab = name;
    document.querySelectorAll(".tab").forEach(function (s) { s.hidden = s.id !== "tab-" + name; });
    document.querySelectorAll("#tabs button").forEach(function (b) {
      b.classList.toggle("active", b.dataset.tab === name);
    });
    if (location.hash !== "#" + name) history.replaceState(null, "", location.pathname + location.search + "#" + name);
    refreshTab();
  }
  function refreshTab() {
    if (!state.info || !state.info.exists) return;  // nothing to show yet (and no error)
    if (state.tab === "data") loadSegments();
    if (state.tab === "train") loadTrain();
    if (state.tab === "listen") { loadCheckpoints(); loadAuditions(); }
  }

  // ---- workspace -------------------------------------------------------------------------------
  function openWorkspace(path) {
    state.ws = path || "";
    localStorage.setItem("voicelab.ws", state.ws);
    $("#ws-path").value = state.ws;
    return get("/api/workspace").then(function (w) {
      state.info = w;
      $("#ws-status").textContent = w.exists
        ? w.root + ": " + t("ws_info", { speaker: w.speaker, wav_dir: w.wav_dir || "-" })
        : w.root + ": " + t("ws_none");
      if (w.exists) {
        // Options saved in voicelab.toml by an earlier run (page or CLI) are the defaults.
        var saved = w.prepare_options || {};
        [["#p-model", "whisper_model", "large-v3"], ["#p-lang", "language", "zh / en"],
          ["#p-transcripts", "transcripts", null]].forEach(function (f) {
          var box = $(f[0]);
          if (saved[f[1]]) box.placeholder = String(saved[f[1]]);
          else if (f[2]) box.placeholder = f[2];
          else box.placeholder = t(box.dataset.i18nPh);
        });
        $("#init-speaker").value = w.speaker || "";
        $("#init-wav").value = w.wav_dir || "";
        fillEpochs(w.epochs || []);
      }
      showJob(w.job);
      refreshTab();
    }).catch(function () {});
  }
  function fillEpochs(epochs) {
    var sel = $("#s-epoch"), keep = sel.value;
    while (sel.options.length > 1) sel.remove(1);
    epochs.forEach(function (e) { sel.add(new Option("epoch " + e, String(e))); });
    sel.value = keep;
  }

  // ---- jobs ------------------------------------------------------------------------------------
  function showJob(job) {
    var prev = state.job;
    state.job = job;
    var box = $("#job");
    if (!job) { box.hidden = true; return; }
    box.hidden = false;
    box.dataset.state = job.state;
    box.dataset.kind = job.kind;
    box.dataset.id = String(job.id);
    $("#job-kind").textContent = t("job_" + job.kind);
    $("#job-state").textContent = t("state_" + job.state);
    $("#job-time").textContent = t("seconds", { s: Math.round(job.seconds) });
    $("#job-stop").hidden = !(job.state === "running" && /^(train|check)-/.test(job.kind));
    var bars = $("#job-progress");
    bars.textContent = "";
    job.progress.forEach(function (p) {
      var pr = el("progress", { max: String(p.total || 1) });
      pr.value = p.done;
      bars.appendChild(el("div", { class: "bar" }, [
        el("span", { text: p.what }), pr,
        el("span", { text: Math.round(p.done) + (p.total ? " / " + p.total : "") +
          (p.eta ? "  ETA " + Math.round(p.eta) + " s" : "") })]));
    });
    var log = $("#job-log");
    log.textContent = "";
    job.log.slice(-12).forEach(function (l) { log.appendChild(el("li", { class: l.level, text: l.text })); });
    var res = $("#job-result");
    res.textContent = (job.result && job.result.summary ? job.result.summary.join("\n") : "");
    if (job.state !== "running" && job.error) showError(job.error);
    var finished = prev && prev.id === job.id && prev.state === "running" && job.state !== "running";
    if (finished) jobFinished(job);
  }
  function jobFinished(job) {
    if (job.kind === "prepare" || job.kind === "review") loadSegments();
    if (job.kind === "say" && job.state === "done") showSay(job.result);
    if (job.kind === "export" || job.kind === "audition" || /^train/.test(job.kind)) {
      if (state.tab === "listen") { loadCheckpoints(); loadAuditions(); }
      openWorkspace(state.ws);
    }
  }
  function startJob(path, body) {
    return post(path, body).then(function (r) { showJob(r.job); return r.job; }).catch(function () {});
  }
  function poll() {
    get("/api/job").then(function (r) { showJob(r.job); }).catch(function () {})
      .then(function () {
        if (state.tab === "train") loadTrain();
        var running = state.job && state.job.state === "running";
        setTimeout(poll, running ? 1000 : 3000);
      });
  }

  // ---- Voice -----------------------------------------------------------------------------------
  function runDoctor() {
    var table = $("#doctor");
    table.textContent = "";
    get("/api/doctor").then(function (r) {
      table.appendChild(el("tr", {}, ["check", "status", "detail", "fix"].map(function (k) { return el("th", { text: t(k) }); })));
      r.checks.forEach(function (c) {
        table.appendChild(el("tr", {}, [el("td", { text: c.name }), el("td", { class: c.status, text: c.status }),
          el("td", { text: c.detail }), el("td", { text: c.status === "pass" ? "" : c.fix })]));
      });
    }).catch(function () {});
  }

  // ---- Data: review list ------------------------------------------------------------------------
  function loadSegments() {
    return get("/api/segments").then(function (r) {
      state.segments = r.segments;
      var reasons = {};
      r.segments.forEach(function (s) { s.reasons.forEach(function (c) { reasons[c] = (reasons[c] || 0) + 1; }); });
      var sel = $("#f-reason"), keep = sel.value;
      while (sel.options.length > 1) sel.remove(1);
      Object.keys(reasons).sort().forEach(function (c) { sel.add(new Option(c + " (" + reasons[c] + ")", c)); });
      sel.value = keep;
      renderSegments();
    }).catch(function () { state.segments = []; renderSegments(); });
  }
  function effective(s) {
    var p = s.pending;
    return { text: p ? p.text : s.text, keep: p ? p.keep === "1" : s.status === "kept" };
  }
  function visibleSegments() {
    var reason = $("#f-reason").value, status = $("#f-status").value, sort = $("#f-sort").value;
    var rows = state.segments.filter(function (s) {
      if (reason && s.reasons.indexOf(reason) < 0) return false;
      if (status === "edited") return !!s.pending;
      if (status) return (effective(s).keep ? "kept" : "excluded") === status;
      return true;
    });
    rows.sort(sort === "risk"
      ? function (a, b) { return b.risk - a.risk || (a.id < b.id ? -1 : 1); }
      : function (a, b) { return a.id < b.id ? -1 : 1; });
    return rows;
  }
  function renderSegments() {
    var body = $("#segments tbody");
    body.textContent = "";
    var rows = visibleSegments();
    rows.forEach(function (s, i) {
      var eff = effective(s);
      var input = el("input", { value: eff.text, "data-id": s.id, class: "seg-text", spellcheck: "false" });
      input.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter") { ev.preventDefault(); saveText(s, input); input.blur(); }
        if (ev.key === "Escape") { input.value = effective(s).text; input.blur(); }
      });
      input.addEventListener("change", function () { saveText(s, input); });
      input.addEventListener("focus", function () { select(i, false); });
      var audio = el("audio", { controls: "", preload: "none", src: "/api/clip?" + new URLSearchParams({ ws: state.ws, utt: s.id }) });
      var keepBtn = el("button", { type: "button", class: "keep", text: t("keep") });
      var exclBtn = el("button", { type: "button", class: "exclude", text: t("exclude") });
      keepBtn.addEventListener("click", function () { setKeep(s, true); });
      exclBtn.addEventListener("click", function () { setKeep(s, false); });
      var tr = el("tr", { "data-id": s.id, class: (eff.keep ? "kept" : "excluded") + (s.pending ? " edited" : "") + (s.reviewed ? " reviewed" : "") }, [
        el("td", { text: String(i + 1) }), el("td", { class: "id", text: s.id }), el("td", {}, [audio]),
        el("td", { class: "text" }, [input]), el("td", { class: "reasons", text: s.reasons_text }),
        el("td", { class: "risk", text: fmt(s.risk, 3) }),
        el("td", { class: "status", text: t(eff.keep ? "kept" : "excluded") }),
        el("td", {}, [keepBtn, exclBtn])]);
      tr.addEventListener("click", function (ev) { if (ev.target.tagName !== "INPUT") select(i, false); });
      body.appendChild(tr);
    });
    renderCount();
    if (state.sel >= rows.length) state.sel = rows.length - 1;
    if (state.sel >= 0) select(state.sel, false);
  }
  function select(i, scroll) {
    var trs = document.querySelectorAll("#segments tbody tr");
    if (!trs.length) return;
    i = Math.max(0, Math.min(trs.length - 1, i));
    trs.forEach(function (tr, j) { tr.classList.toggle("sel", j === i); });
    state.sel = i;
    if (scroll) trs[i].scrollIntoView({ block: "nearest" });
  }
  function segAt(i) {
    var tr = document.querySelectorAll("#segments tbody tr")[i];
    if (!tr) return null;
    var id = tr.dataset.id;
    return state.segments.filter(function (s) { return s.id === id; })[0] || null;
  }
  function saveEdit(s, body) {
    body.id = s.id;
    return post("/api/review/edit", body).then(function (r) { s.pending = r.pending; updateRow(s); })
      .catch(function () {});
  }
  // One row changed: redraw it alone (a list of thousands stays fast), unless a filter on the
  // status may now hide it.
  function updateRow(s) {
    var tr = document.querySelector('#segments tbody tr[data-id="' + CSS.escape(s.id) + '"]');
    if (!tr || $("#f-status").value) { renderSegments(); return; }
    var eff = effective(s);
    tr.className = (eff.keep ? "kept" : "excluded") + (s.pending ? " edited" : "") +
      (s.reviewed ? " reviewed" : "") + (tr.classList.contains("sel") ? " sel" : "");
    tr.querySelector("td.status").textContent = t(eff.keep ? "kept" : "excluded");
    var input = tr.querySelector("input");
    if (document.activeElement !== input) input.value = eff.text;
    renderCount();
  }
  function renderCount() {
    var edits = state.segments.filter(function (s) { return s.pending; }).length;
    var kept = state.segments.filter(function (s) { return s.status === "kept"; }).length;
    var shown = document.querySelectorAll("#segments tbody tr").length;
    $("#seg-count").textContent = state.segments.length
      ? t("seg_count", { shown: shown, total: state.segments.length, kept: kept, edits: edits })
      : t("no_segments");
    $("#apply-go").disabled = edits === 0;
    $("#discard-go").disabled = edits === 0;
  }
  function saveText(s, input) {
    if (input.value.trim() === effective(s).text) return;
    saveEdit(s, { text: input.value });
  }
  function setKeep(s, keep) { saveEdit(s, { keep: keep }); }
  function onKey(ev) {
    if (state.tab !== "data") return;
    var tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select") return;
    var trs = document.querySelectorAll("#segments tbody tr");
    if (!trs.length) return;
    var k = ev.key.toLowerCase();
    var s = segAt(state.sel < 0 ? 0 : state.sel);
    if (k === "arrowdown" || k === "j") { select(state.sel + 1, true); ev.preventDefault(); }
    else if (k === "arrowup") { select(state.sel - 1, true); ev.preventDefault(); }
    else if (k === " ") {
      var a = trs[Math.max(0, state.sel)].querySelector("audio");
      if (a.paused) a.play(); else a.pause();
      ev.preventDefault();
    } else if (k === "k" && s) { setKeep(s, true); }
    else if (k === "x" && s) { setKeep(s, false); }
    else if ((k === "f" || k === "enter") && s) {
      trs[Math.max(0, state.sel)].querySelector("input").focus();
      ev.preventDefault();
    }
  }

  // ---- Train -----------------------------------------------------------------------------------
  function trainBody(dry) {
    var f = formData($("#train-form"));
    return { model: f.model, device: f.device, epochs: f.epochs, resume: f.mode === "resume",
      new: f.mode === "new", dry_run: !!dry };
  }
  function loadTrain() {
    if (!state.info || !state.info.exists) return;
    get("/api/train/view", { model: $("#t-model").value }).then(function (v) {
      var bits = [];
      if (!v.exists && !v.train_loss.length) bits.push(t("train_none"));
      else {
        bits.push(v.model + ": " + (v.running ? t("train_running") : t("train_ended")));
        if (v.line) bits.push(v.line);
        if (v.tokens_per_s) bits.push("~" + v.tokens_per_s + " " + t("tokens_s"));
        if (v.summary && v.summary.best_cv_loss !== null) bits.push("best CV " + fmt(v.summary.best_cv_loss) + " (epoch " + v.summary.best_epoch + ")");
        // A run exists: continuing it is what the user most likely wants next.
        var mode = $("#t-mode");
        if (v.exists && !mode.dataset.touched && mode.value === "") mode.value = "resume";
      }
      $("#train-line").textContent = bits.join(" · ");
      chart($("#chart-train"), [{ pts: v.train_loss, color: "#2563a8", name: t("loss") }],
        [{ pts: v.train_acc, color: "#1c7c43", name: t("acc") }]);
      chart($("#chart-cv"), [{ pts: v.cv_loss, color: "#b42318", name: t("loss") }],
        [{ pts: v.cv_acc, color: "#9a6700", name: t("acc") }]);
    }).catch(function () {});
  }
  // Lines on one SVG: left axis for `left` series, right axis (0..1 scaled) for `right` ones.
  function chart(svg, left, right) {
    var NS = "http://www.w3.org/2000/svg", W = 480, H = 240, P = 34;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var all = left.concat(right), xs = [];
    all.forEach(function (s) { s.pts.forEach(function (p) { xs.push(p[0]); }); });
    svg.dataset.points = String(xs.length);
    if (!xs.length) return;
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x1 === x0) x1 = x0 + 1;
    function ext(series) {
      var ys = [];
      series.forEach(function (s) { s.pts.forEach(function (p) { ys.push(p[1]); }); });
      if (!ys.length) return [0, 1];
      var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
      return hi === lo ? [lo - 0.5, hi + 0.5] : [lo, hi];
    }
    function add(tag, attrs) {
      var e = document.createElementNS(NS, tag);
      Object.keys(attrs).forEach(function (k) { if (k !== "text") e.setAttribute(k, attrs[k]); });
      if (attrs.text !== undefined) e.textContent = attrs.text;
      svg.appendChild(e);
      return e;
    }
    add("rect", { x: P, y: 8, width: W - 2 * P, height: H - P - 8, fill: "none", stroke: "#d7dde3" });
    [[left, ext(left), P - 3, "end"], [right, ext(right), W - P + 3, "start"]].forEach(function (side) {
      var series = side[0], e = side[1];
      if (!series.some(function (s) { return s.pts.length; })) return;
      add("text", { x: side[2], y: 14, "text-anchor": side[3], text: fmt(e[1], 3) });
      add("text", { x: side[2], y: H - P, "text-anchor": side[3], text: fmt(e[0], 3) });
      series.forEach(function (s) {
        var d = s.pts.map(function (p, i) {
          var x = P + (p[0] - x0) / (x1 - x0) * (W - 2 * P);
          var y = 8 + (1 - (p[1] - e[0]) / (e[1] - e[0])) * (H - P - 8);
          return (i ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
        }).join(" ");
        add("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 1.6, class: "series" });
        if (s.pts.length < 30) s.pts.forEach(function (p) {
          add("circle", { cx: P + (p[0] - x0) / (x1 - x0) * (W - 2 * P),
            cy: 8 + (1 - (p[1] - e[0]) / (e[1] - e[0])) * (H - P - 8), r: 2.5, fill: s.color });
        });
      });
    });
    add("text", { x: P, y: H - P + 14, text: String(x0) });
    add("text", { x: W - P, y: H - P + 14, "text-anchor": "end", text: String(x1) });
    var lx = P + 6;
    all.forEach(function (s) {
      if (!s.pts.length) return;
      add("rect", { x: lx, y: H - 14, width: 10, height: 4, fill: s.color });
      add("text", { x: lx + 14, y: H - 10, text: s.name });
      lx += 70;
    });
  }

  // ---- Checkpoints & listening -------------------------------------------------------------------
  function loadCheckpoints() {
    if (!state.info || !state.info.exists) return;
    var model = $("#c-model").value;
    get("/api/checkpoints", { model: model }).then(function (r) {
      $("#ckpt-rule").textContent = t("rule", { rule: r.rule });
      var table = $("#checkpoints");
      table.textContent = "";
      if (!r.checkpoints.length) { table.appendChild(el("tr", {}, [el("td", { text: t("ckpt_none") })])); return; }
      table.appendChild(el("tr", {}, ["marks", "file", "col_epoch", "step", "cv_loss", "cv_acc", "size", "saved", ""]
        .map(function (k) { return el("th", { text: k ? t(k) : "" }); })));
      r.checkpoints.forEach(function (c) {
        var marks = (c.locked ? "L" : "") + (c.chosen ? "*" : "") + (c.exported ? "E" : "");
        var lockBtn = null;
        if (model === "llm" && c.kind === "epoch") {
          lockBtn = el("button", { type: "button", text: c.locked ? t("unlock") : t("lock") });
          lockBtn.addEventListener("click", function () {
            post("/api/lock", { epoch: c.locked ? null : c.epoch }).then(loadCheckpoints).catch(function () {});
          });
        }
        table.appendChild(el("tr", {}, [el("td", { text: marks }), el("td", { text: c.file }),
          el("td", { text: c.epoch === null ? "-" : String(c.epoch) }), el("td", { text: c.step === null ? "-" : String(c.step) }),
          el("td", { text: fmt(c.cv_loss) }), el("td", { text: fmt(c.cv_acc) }),
          el("td", { text: (c.size / 1e6).toFixed(1) + " MB" }), el("td", { text: String(c.save_time || "").slice(0, 19) }),
          el("td", {}, [lockBtn])]));
      });
    }).catch(function () {});
  }
  function loadAuditions() {
    if (!state.info || !state.info.exists) return;
    get("/api/auditions").then(function (r) {
      var box = $("#auditions");
      box.textContent = "";
      r.auditions.forEach(function (a) { box.appendChild(renderAudition(a)); });
    }).catch(function () {});
  }
  function renderAudition(a) {
    var div = el("div", { class: "report", "data-report": a.report });
    div.appendChild(el("h4", { text: a.report + (a.blind ? " (blind)" : "") }));
    var labels = [];
    a.sentences.forEach(function (s) { s.takes.forEach(function (tk) { if (labels.indexOf(tk.label) < 0) labels.push(tk.label); }); });
    var table = el("table", { class: "list" });
    table.appendChild(el("tr", {}, [el("th", { text: t("sentence") })].concat(labels.map(function (l) { return el("th", { text: l }); }))));
    a.sentences.forEach(function (s) {
      var cells = [el("td", { text: s.text, title: s.id })];
      labels.forEach(function (l) {
        var tk = s.takes.filter(function (x) { return x.label === l; })[0];
        if (!tk) { cells.push(el("td")); return; }
        var kids = [el("audio", { controls: "", preload: "none", src: fileUrl(tk.path) })];
        if (a.blind) {
          var radio = el("input", { type: "radio", name: a.report + "-" + s.id, value: l, "aria-label": t("best") + " " + l });
          if (a.choices && a.choices[s.id] === l) radio.checked = true;
          radio.addEventListener("change", function () {
            post("/api/vote", { report: a.report, sentence: s.id, letter: l }).then(loadAuditions).catch(function () {});
          });
          kids.push(radio);
        }
        cells.push(el("td", {}, kids));
      });
      table.appendChild(el("tr", {}, cells));
    });
    div.appendChild(table);
    if (a.blind) {
      var n = Object.keys(a.choices || {}).length;
      div.appendChild(el("p", { text: t("votes", { n: n, total: a.sentences.length }) }));
      if (a.tally) {
        var parts = Object.keys(a.tally).map(function (k) { return k + " " + a.tally[k]; });
        div.appendChild(el("p", { class: "tally", text: t("tally", { tally: parts.join(", ") }) }));
      }
    }
    return div;
  }

  // ---- Speak -----------------------------------------------------------------------------------
  function showSay(res) {
    var box = $("#say-out");
    box.textContent = "";
    (res.files || []).forEach(function (f, i) {
      var url = fileUrl(f);
      box.appendChild(el("div", {}, [el("span", { text: f + "  (" + fmt(res.durations[i], 2) + " s) " }),
        el("a", { href: url, download: f.split("/").pop(), text: t("download") }),
        el("audio", { controls: "", preload: "auto", src: url, class: "said" })]));
    });
  }

  // ---- wiring ----------------------------------------------------------------------------------
  function wire() {
    $("#ws-form").addEventListener("submit", function (ev) { ev.preventDefault(); showError(null); openWorkspace($("#ws-path").value.trim()); });
    $("#lang").addEventListener("change", function () {
      state.lang = $("#lang").value; localStorage.setItem("voicelab.lang", state.lang);
      applyLang(); renderSegments(); showJob(state.job); refreshTab();
    });
    document.querySelectorAll("#tabs button").forEach(function (b) {
      b.addEventListener("click", function () { showTab(b.dataset.tab); });
    });
    $("#init-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var f = formData($("#init-form"));
      post("/api/workspace", { speaker: f.speaker || "", wav_dir: f.wav_dir })
        .then(function () { openWorkspace(state.ws); }).catch(function () {});
    });
    $("#doctor-go").addEventListener("click", runDoctor);
    $("#prepare-form").addEventListener("submit", function (ev) { ev.preventDefault(); startJob("/api/prepare", formData($("#prepare-form"))); });
    ["#f-reason", "#f-status", "#f-sort"].forEach(function (s) { $(s).addEventListener("change", renderSegments); });
    $("#apply-go").addEventListener("click", function () { startJob("/api/review/apply", {}); });
    $("#discard-go").addEventListener("click", function () { post("/api/review/discard", {}).then(loadSegments).catch(function () {}); });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", function () {
      var tab = location.hash.replace("#", "");
      if (tab !== state.tab && document.getElementById("tab-" + tab)) showTab(tab);
    });
    $("#train-form").addEventListener("submit", function (ev) { ev.preventDefault(); startJob("/api/train", trainBody(false)); });
    $("#train-check").addEventListener("click", function () { startJob("/api/train", trainBody(true)); });
    $("#train-stop").addEventListener("click", function () { post("/api/job/stop", {}).then(function (r) { showJob(r.job); }).catch(function () {}); });
    $("#job-stop").addEventListener("click", function () { post("/api/job/stop", {}).then(function (r) { showJob(r.job); }).catch(function () {}); });
    $("#t-model").addEventListener("change", loadTrain);
    $("#t-mode").addEventListener("change", function () { $("#t-mode").dataset.touched = "1"; });
    $("#c-model").addEventListener("change", loadCheckpoints);
    $("#ckpt-refresh").addEventListener("click", function () { loadCheckpoints(); loadAuditions(); });
    $("#export-form").addEventListener("submit", function (ev) { ev.preventDefault(); startJob("/api/export", formData($("#export-form"))); });
    $("#audition-form").addEventListener("submit", function (ev) { ev.preventDefault(); startJob("/api/audition", formData($("#audition-form"))); });
    $("#say-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var f = formData($("#say-form"));
      f.text = f.text || "";
      f.epoch = f.epoch === null ? null : Number(f.epoch);
      if (f.speed === null) f.speed = 1.0;
      startJob("/api/say", f);
    });
  }
  function start() {
    var q = new URLSearchParams(location.search);
    state.lang = q.get("lang") || localStorage.getItem("voicelab.lang") || (navigator.language || "").slice(0, 2) === "zh" && "zh" || "en";
    if (!STRINGS[state.lang]) state.lang = "en";
    applyLang();
    wire();
    var tab = (location.hash || "").replace("#", "");
    fetch("/api/info").then(function (r) { return r.json(); }).then(function (info) {
      var ws = q.get("ws") || localStorage.getItem("voicelab.ws") || info.default_workspace;
      state.ws = ws;
      showTab(["voice", "data", "train", "listen", "speak"].indexOf(tab) >= 0 ? tab : "voice");
      return openWorkspace(ws);
    }).then(poll);
  }
  start();
})();
