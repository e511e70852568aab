// Linewatch operator page: live state over server-sent events, feedback over fetch. No build step.
"use strict";
(function () {
  const base = "/operator";
  let modelKey = null;
  let galleryKey = "";

  function text(el, value) { if (el) el.textContent = value; }
  function ms(p) { return p && p.p50 !== null ? p.p50.toFixed(1) + "/" + p.p99.toFixed(1) + " ms" : "-"; }
  function frameUrl(s) { return base + "/frame/" + encodeURIComponent(s.camera) + "/" + s.frame_id + ".jpg"; }

  function notice(message) { text(document.getElementById("notice"), message); }

  function send(kind, camera, frameId) {
    if (camera === undefined || frameId === undefined || frameId === "") { notice("no frame to judge yet"); return; }
    fetch(base + "/api/feedback", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Linewatch-Feedback": "1" },
      body: JSON.stringify({ kind: kind, camera: camera, frame_id: Number(frameId) }),
    }).then(function (r) { return r.json().then(function (doc) { return [r.status, doc]; }); })
      .then(function (res) {
        const doc = res[1];
        notice(res[0] === 200 ? "filed " + doc.action + ": " + doc.filed : "not filed: " + doc.error);
      })
      .catch(function (err) { notice("not filed: " + err); });
  }

  function actions(container, camera, frameId) {
    container.querySelectorAll("button[data-kind]").forEach(function (b) {
      b.dataset.camera = camera; b.dataset.frameId = frameId;
    });
  }

  document.addEventListener("click", function (ev) {
    const b = ev.target.closest("button[data-kind]");
    if (b) send(b.dataset.kind, b.dataset.camera, b.dataset.frameId);
  });

  function updateCamera(section, s, c) {
    const img = section.querySelector("img.heatmap");
    if (s && img.dataset.frameId !== String(s.frame_id) && !img.dataset.loading) {
      img.dataset.loading = "1";
      const next = frameUrl(s);
      const probe = new Image();
      probe.onload = function () {
        img.src = next; img.dataset.frameId = String(s.frame_id); delete img.dataset.loading;
        const v = section.querySelector(".verdict");
        v.className = "verdict " + (s.anomalous ? "anomalous" : "good");
        text(v, (s.anomalous ? "ANOMALY" : "good") + " (frame " + s.frame_id + ")");
        text(section.querySelector(".score"), "score " + s.score.toFixed(3) + " / threshold " + s.threshold.toFixed(3)
          + (s.regions.length ? ", " + s.regions.length + " region(s)" : ""));
        text(section.querySelector(".model"), "model " + s.model.name + " v" + s.model.version + (s.task ? ", task " + s.task : ""));
        actions(section, s.camera, s.frame_id);
      };
      probe.onerror = function () { delete img.dataset.loading; };
      probe.src = next;
    }
    if (c) {
      text(section.querySelector(".counters"), "frames " + c.frames + " · anomalies " + c.anomalies + " · " + c.fps + " fps"
        + " · dropped " + c.drops.frames + " (bad " + c.drops.bad_frames + ") · infer " + ms(c.latency_ms.infer)
        + " · end-to-end " + ms(c.latency_ms.end_to_end) + " · broker " + (c.broker_connected ? "connected" : "OFFLINE")
        + " · outbox " + c.outbox_depth);
    }
  }

  function updateGallery(items) {
    const key = items.map(function (s) { return s.camera + ":" + s.frame_id; }).join(",");
    if (key === galleryKey) return;
    galleryKey = key;
    const box = document.getElementById("gallery");
    box.replaceChildren();
    items.forEach(function (s) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = frameUrl(s); img.alt = s.camera + " frame " + s.frame_id; img.loading = "lazy";
      const cap = document.createElement("figcaption");
      cap.textContent = s.camera + " #" + s.frame_id + " score " + s.score.toFixed(3) + " v" + s.model.version;
      fig.append(img, cap);
      ["false_alarm", "missed"].forEach(function (kind) {
        const b = document.createElement("button");
        b.dataset.kind = kind;
        b.textContent = kind === "false_alarm" ? "false alarm: part is good" : "missed: part is bad";
        fig.append(b);
      });
      actions(fig, s.camera, s.frame_id);
      box.append(fig);
    });
  }

  function updateModels() {
    fetch(base + "/api/models", { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (rows) {
      const body = document.querySelector("#models tbody");
      body.replaceChildren();
      rows.forEach(function (m) {
        const tr = document.createElement("tr");
        const gate = m.gate ? (m.gate.passed ? "passed" : "refused") + ": " + m.gate.checks.join("; ") : "-";
        const swapped = m.swapped.map(function (t) { return new Date(t * 1000).toISOString().replace(".000", ""); }).join(", ");
        [m.name + " v" + m.version + (m.live ? " (live)" : ""), String(m.created),
         m.added.join(", ") || (m.bank_only ? "more good images" : "-"), gate, swapped, m.tasks.join(", ")]
          .forEach(function (v) { const td = document.createElement("td"); td.textContent = v; tr.append(td); });
        body.append(tr);
      });
    });
  }

  function apply(state) {
    document.querySelectorAll("section.camera").forEach(function (section) {
      const name = section.dataset.camera;
      updateCamera(section, state.latest[name], state.cameras[name]);
    });
    updateGallery(state.gallery);
    text(document.getElementById("totals"), "backend " + state.backend + " · outbox " + state.outbox.depth
      + (state.outbox.healthy ? "" : " (WRITES FAILING)") + " · dropped results " + state.drops.results
      + ", outbox " + state.drops.outbox + (state.model_error ? " · model error: " + state.model_error : ""));
    const key = state.model ? state.model.name + ":" + state.model.version : "";
    if (key !== modelKey) { if (modelKey !== null) updateModels(); modelKey = key; }
  }

  const events = new EventSource(base + "/events");
  events.onopen = function () { const l = document.getElementById("link"); l.className = ""; text(l, "live"); };
  events.onerror = function () { const l = document.getElementById("link"); l.className = "stale"; text(l, "reconnecting"); };
  events.onmessage = function (ev) { apply(JSON.parse(ev.data)); };
})();
