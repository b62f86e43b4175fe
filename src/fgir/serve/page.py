"""The single page of ``fgir serve``: HTML, CSS and JavaScript in one string, no external assets
(the demo works offline). Element ids used by the browser test: ``file``, ``drop``, ``overlay-method``,
``status``, ``error``, ``results``, ``preds`` (rows ``tr.pred`` with ``.name`` and ``.prob``),
``overlay``, ``timing``."""

from __future__ import annotations

import html
import json

_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fgir demo · __TITLE__</title>
<style>
  :root { --fg:#1d2330; --muted:#5d6677; --line:#e3e6ec; --accent:#2f6fde; --bg:#f5f6f9; --err:#b3261e; }
  * { box-sizing: border-box; }
  body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
         color:var(--fg); background:var(--bg); }
  header { background:#fff; border-bottom:1px solid var(--line); padding:14px 28px; }
  header h1 { margin:0; font-size:20px; font-weight:650; }
  header h1 span { color:var(--accent); }
  header .meta { color:var(--muted); font-size:13px; margin-top:2px; }
  main { max-width:1000px; margin:22px auto; padding:0 20px; }
  .card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 20px; margin-bottom:18px;
          box-shadow:0 1px 2px rgba(20,30,50,.04); }
  #drop { border:2px dashed #b9c2d3; border-radius:10px; padding:26px; text-align:center; cursor:pointer;
          transition:background .15s,border-color .15s; position:relative; }
  #drop.over { background:#eef3fd; border-color:var(--accent); }
  #drop strong { color:var(--accent); }
  #drop .hint { color:var(--muted); font-size:13px; margin-top:4px; }
  #file { position:absolute; inset:0; opacity:0; cursor:pointer; width:100%; }
  .controls { display:flex; gap:14px; align-items:center; margin-top:12px; font-size:14px; color:var(--muted); }
  select { font:inherit; padding:3px 6px; border-radius:6px; border:1px solid #c8cedb; background:#fff; }
  #status { min-height:1.4em; color:var(--muted); font-size:14px; margin-top:10px; }
  #error { display:none; margin-top:10px; padding:10px 12px; border-radius:8px; background:#fdecea;
           color:var(--err); border:1px solid #f3c3bf; font-size:14px; }
  #results { display:none; }
  .grid { display:grid; grid-template-columns: 1fr 1fr; gap:18px; }
  @media (max-width: 760px) { .grid { grid-template-columns: 1fr; } }
  figure { margin:0; }
  figure img { width:100%; max-height:340px; object-fit:contain; background:#f0f2f6; border-radius:8px;
               border:1px solid var(--line); display:block; }
  figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
  .pair { display:grid; grid-template-columns:1fr 1fr; gap:10px; }
  h2 { font-size:15px; margin:0 0 10px; font-weight:650; }
  table { width:100%; border-collapse:collapse; }
  td { padding:7px 4px; border-bottom:1px solid var(--line); vertical-align:middle; }
  tr:last-child td { border-bottom:none; }
  td.rank { color:var(--muted); width:1.6em; }
  td.name { font-weight:550; overflow-wrap:anywhere; }
  tr.pred:first-child td.name { color:var(--accent); }
  td.bar { width:28%; }
  td.bar div { height:9px; border-radius:5px; background:linear-gradient(90deg,#7aa7f0,var(--accent)); min-width:2px; }
  td.prob { text-align:right; width:5.2em; font-variant-numeric:tabular-nums; }
  #timing { margin-top:14px; font-size:13px; color:var(--muted); font-variant-numeric:tabular-nums; }
  #timing b { color:var(--fg); }
  footer { text-align:center; color:var(--muted); font-size:12px; margin:10px 0 30px; }
</style>
</head>
<body>
<header>
  <h1><span>fgir</span> demo · __TITLE__</h1>
  <div class="meta" id="meta"></div>
</header>
<main>
  <div class="card">
    <div id="drop">
      <input type="file" id="file" accept="image/*" aria-label="image file">
      <div><strong>Drop an image here</strong> or click to choose one</div>
      <div class="hint" id="limits"></div>
    </div>
    <div class="controls">
      <label for="overlay-method">Overlay</label>
      <select id="overlay-method"></select>
    </div>
    <div id="status">Waiting for an image.</div>
    <div id="error" role="alert"></div>
  </div>
  <div class="card" id="results">
    <div class="grid">
      <div>
        <h2>Image</h2>
        <div class="pair">
          <figure><img id="preview" alt="your upload"><figcaption id="preview-cap">your upload</figcaption></figure>
          <figure><img id="overlay" alt="overlay"><figcaption id="overlay-cap"></figcaption></figure>
        </div>
      </div>
      <div>
        <h2>Top-5 classes</h2>
        <table><tbody id="preds"></tbody></table>
        <div id="timing"></div>
      </div>
    </div>
  </div>
  <footer>Runs locally: the image is sent only to this server.</footer>
</main>
<script>
const INFO = __INFO__;
const $ = (id) => document.getElementById(id);
const LABELS = {auto: "automatic", gradcam: "Grad-CAM", rollout: "attention rollout", none: "none"};
function mib(n) { return (n / 1048576).toFixed(n < 1048576 ? 2 : 0) + " MiB"; }

(function init() {
  const bits = [INFO.model + (INFO.plugins.length ? " + " + INFO.plugins.join(", ") : ""),
                INFO.num_classes + " classes", INFO.img_size + " px", "trained on " + INFO.dataset, INFO.device];
  $("meta").textContent = bits.join(" · ");
  $("limits").textContent = "JPEG, PNG, WebP, GIF, BMP or TIFF · up to " + mib(INFO.max_bytes) + " and " +
                            (INFO.max_pixels / 1e6) + " megapixels";
  const sel = $("overlay-method");
  const opts = INFO.overlays.length ? ["auto"].concat(INFO.overlays, ["none"]) : ["none"];
  for (const m of opts) {
    const o = document.createElement("option");
    o.value = m;
    o.textContent = m === "auto" ? "automatic (" + LABELS[INFO.default_overlay] + ")" : LABELS[m];
    sel.appendChild(o);
  }
})();

function showError(msg) {
  $("status").textContent = "";
  $("error").textContent = msg;
  $("error").style.display = "block";
}

function breakable(el, text) {  // long names like Gray_crowned_Rosy_Finch wrap after "_", not mid-word
  text.split(/(?<=_)/).forEach((part, i) => {
    if (i) el.appendChild(document.createElement("wbr"));
    el.appendChild(document.createTextNode(part));
  });
}

function render(data, roundTrip, file) {
  const tbody = $("preds");
  tbody.replaceChildren();
  data.top.forEach((p, i) => {
    const tr = document.createElement("tr");
    tr.className = "pred";
    tr.dataset.classId = p.class_id;
    const pct = 100 * p.prob;
    const cells = [["rank", String(i + 1)], ["name", p.class_name], ["bar", ""], ["prob", pct.toFixed(1) + " %"]];
    for (const [cls, text] of cells) {
      const td = document.createElement("td");
      td.className = cls;
      if (cls === "bar") { const d = document.createElement("div"); d.style.width = Math.max(pct, 0.5) + "%";
                           td.appendChild(d); }
      else if (cls === "name") { breakable(td, text); } else { td.textContent = text; }
      if (cls === "prob") td.dataset.prob = p.prob;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  });
  const ov = data.overlay;
  if (ov) {
    $("overlay").src = ov.image;
    $("overlay").style.display = "block";
    $("overlay-cap").textContent = LABELS[ov.method] + " for “" + data.top[0].class_name + "”" +
                                   (ov.box ? " · GLSim crop box in green" : "") + " (model input)" +
                                   (data.overlay_note ? " · " + data.overlay_note : "");
  } else {
    $("overlay").removeAttribute("src");
    $("overlay").style.display = "none";
    $("overlay-cap").textContent = data.overlay_note ? "No overlay: " + data.overlay_note : "";
  }
  $("preview-cap").textContent = (file.name || "your upload") + " · " + data.image.width + " × " + data.image.height;
  const t = data.timing_ms;
  $("timing").innerHTML = "";
  const parts = [["model", t.inference], ["overlay", t.overlay], ["decode", t.decode], ["round trip", roundTrip]];
  parts.forEach(([k, v], i) => {
    if (k === "overlay" && !ov) return;
    const s = document.createElement("span");
    s.innerHTML = (i ? " · " : "") + k + " <b></b>";
    s.querySelector("b").textContent = v.toFixed(1) + " ms";
    if (k === "model") s.id = "time-model";
    $("timing").appendChild(s);
  });
  $("results").style.display = "block";
  $("status").textContent = "Done: " + (file.name || "image") + ".";
}

async function send(file) {
  $("error").style.display = "none";
  $("status").textContent = "Running the model on " + (file.name || "the image") + " …";
  const url = URL.createObjectURL(file);
  $("preview").src = url;
  const fd = new FormData();
  fd.append("image", file, file.name || "upload");
  const t0 = performance.now();
  let res, data;
  try {
    res = await fetch("api/predict?overlay=" + encodeURIComponent($("overlay-method").value),
                      {method: "POST", body: fd});
  } catch (e) { showError("The server did not answer (" + e + "). Is `fgir serve` still running?"); return; }
  try { data = await res.json(); }
  catch (e) { showError("The server sent an unreadable answer (HTTP " + res.status + ")."); return; }
  const roundTrip = performance.now() - t0;
  if (!res.ok) { $("results").style.display = "none"; showError(data.error || ("HTTP " + res.status)); return; }
  render(data, roundTrip, file);
}

$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) send(f); e.target.value = ""; });
const drop = $("drop");
["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
  e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => {
  e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) send(f); });
</script>
</body>
</html>
"""


def render_page(info: dict) -> str:
    """The page with the model's ``info`` (``/api/info``) embedded."""
    blob = json.dumps(info).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(str(info.get("model", "?")))
    return _PAGE.replace("__INFO__", blob).replace("__TITLE__", title)
