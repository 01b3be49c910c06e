"""The lab's one page: prompt, up to four conditions side by side on one seed, tokens, history.

Plain HTML and JavaScript over the JSON API (no build step, nothing fetched from the network).
Conditions are edited as JSON in the study YAML's schema; presets are the shipped configs'
conditions. Ids and classes used by the browser test: prompt, seed, generate, add-condition,
columns, .condition-column (.preset, .condition-json, .save, .result-image, .result-row, .error),
encode, tokens, history (.history-group, .history-item), status.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llm-dit lab</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fafafa; }
  h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 16px 0 6px; }
  #info { color: #666; font-size: 12px; margin-bottom: 10px; }
  #prompt { width: 100%; max-width: 900px; height: 48px; font: inherit; }
  .bar { display: flex; gap: 8px; align-items: center; margin: 6px 0; flex-wrap: wrap; }
  #columns { display: flex; gap: 10px; flex-wrap: wrap; }
  .condition-column { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 240px; }
  .condition-column select { width: 100%; }
  .condition-json { width: 100%; height: 110px; font: 11px/1.3 monospace; box-sizing: border-box; }
  .result-image { width: 224px; height: 224px; image-rendering: pixelated; background: #eee; display: block; margin-top: 6px; }
  .result-row { font: 11px/1.3 monospace; white-space: pre-wrap; color: #444; max-height: 120px; overflow: auto; }
  .error { color: #b00020; font-size: 12px; white-space: pre-wrap; }
  #tokens span { display: inline-block; margin: 1px; padding: 0 2px; border-radius: 3px; font: 11px monospace; }
  .seg-system { background: #fde2c8; } .seg-user { background: #d4edda; } .seg-think { background: #e2d9f3; }
  .seg-assistant { background: #d1ecf1; } .seg-template { background: #e9ecef; color: #777; }
  .history-group { display: flex; gap: 6px; align-items: flex-start; margin: 4px 0; padding: 4px; border-bottom: 1px solid #eee; }
  .history-item { font-size: 11px; width: 96px; overflow: hidden; }
  .history-item img { width: 96px; height: 96px; image-rendering: pixelated; display: block; }
  .remove { float: right; border: none; background: none; cursor: pointer; color: #999; }
</style>
</head>
<body>
<h1>llm-dit lab</h1>
<div id="info">loading…</div>
<textarea id="prompt" placeholder="a prompt">A red apple on a wooden table</textarea>
<div class="bar">
  <label>seed <input id="seed" type="number" value="42" min="0" style="width:110px"></label>
  <button id="generate">Generate</button>
  <button id="add-condition">+ condition</button>
  <button id="encode">Tokens</button>
  <span id="status"></span>
</div>
<div id="columns"></div>
<div id="tokens"></div>
<h2>History <small>(lab folder: <span id="folder"></span>)</small></h2>
<div id="history"></div>
<script>
const MAX_CONDITIONS = 4;
let presets = [];

async function api(path, body) {
  const options = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

function presetOptions() {
  const groups = {};
  presets.filter(p => p.condition).forEach((p, i) => { (groups[p.config] = groups[p.config] || []).push([i, p]); });
  let html = '<option value="">preset…</option>';
  for (const [config, entries] of Object.entries(groups)) {
    html += `<optgroup label="${config}">` + entries.map(([i, p]) => `<option value="${i}">${p.name}</option>`).join("") + "</optgroup>";
  }
  return html;
}

function addColumn(condition) {
  const columns = document.getElementById("columns");
  if (columns.children.length >= MAX_CONDITIONS) return null;
  const column = document.createElement("div");
  column.className = "condition-column";
  column.innerHTML = `<button class="remove" title="remove">✕</button>
    <select class="preset">${presetOptions()}</select>
    <textarea class="condition-json" spellcheck="false"></textarea>
    <button class="save">save as condition</button>
    <img class="result-image" alt="">
    <div class="error"></div><div class="result-row"></div>`;
  column.querySelector(".condition-json").value = JSON.stringify(condition || {name: "baseline"}, null, 1);
  column.querySelector(".preset").onchange = (event) => {
    const preset = presets[Number(event.target.value)];
    if (preset) column.querySelector(".condition-json").value = JSON.stringify(preset.condition, null, 1);
  };
  column.querySelector(".remove").onclick = () => { if (columns.children.length > 1) column.remove(); updateButtons(); };
  column.querySelector(".save").onclick = () => saveCondition(column);
  columns.appendChild(column);
  updateButtons();
  return column;
}

function updateButtons() {
  document.getElementById("add-condition").disabled = document.getElementById("columns").children.length >= MAX_CONDITIONS;
}

function readCondition(column) {
  try { return JSON.parse(column.querySelector(".condition-json").value || "{}"); }
  catch (error) { throw new Error("the condition is not valid JSON: " + error.message); }
}

function describe(row) {
  const keys = ["item_id", "condition", "seed", "steps", "shift", "height", "width", "guidance_scale", "seconds",
                "num_tokens", "num_embeddings", "metric.detail_score", "metric.caption_tokens"];
  return keys.filter(k => row[k] !== undefined && row[k] !== null)
             .map(k => `${k}: ${typeof row[k] === "number" ? Number(row[k].toPrecision(4)) : row[k]}`).join("\n");
}

async function generateColumn(column, prompt, seed, group) {
  const error = column.querySelector(".error");
  error.textContent = ""; column.querySelector(".result-row").textContent = "…";
  try {
    const result = await api("/generate", {prompt, seed, condition: readCondition(column), group});
    column.querySelector(".result-image").src = "data:image/png;base64," + result.png_base64;
    column.querySelector(".result-image").dataset.item = result.row.item_id;
    column.querySelector(".result-row").textContent = describe(result.row);
  } catch (e) {
    error.textContent = e.message; column.querySelector(".result-row").textContent = "";
    column.querySelector(".result-image").removeAttribute("src");
  }
}

async function generateAll() {
  const prompt = document.getElementById("prompt").value;
  const seed = Number(document.getElementById("seed").value);
  const group = "g" + Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  const status = document.getElementById("status");
  status.textContent = "generating…";
  const columns = [...document.querySelectorAll(".condition-column")];
  // One after another, left to right: the one model runs them in turn anyway, and the history then
  // keeps a comparison in column order (requests sent together reached the queue in any order).
  for (const column of columns) await generateColumn(column, prompt, seed, group);
  status.textContent = "done";
  await loadHistory();
}

async function showTokens() {
  const target = document.getElementById("tokens");
  const column = document.querySelector(".condition-column");
  try {
    const result = await api("/encode", {prompt: document.getElementById("prompt").value, condition: readCondition(column)});
    const stats = result.stats;
    target.innerHTML = `<div>${result.num_tokens} tokens → ${stats.rows}×${stats.dim} features; mean row norm ${stats.mean_row_norm.toFixed(3)}</div>` +
      result.tokens.map(t => `<span class="seg-${t.segment}" title="${t.segment} ${t.id}"></span>`).join("");
    [...target.querySelectorAll("span")].forEach((span, i) => { span.textContent = result.tokens[i].text; });
  } catch (e) { target.textContent = e.message; }
}

async function saveCondition(column) {
  const error = column.querySelector(".error");
  try {
    const result = await api("/save-condition", {condition: readCondition(column), prompt: document.getElementById("prompt").value,
                                                 seed: Number(document.getElementById("seed").value)});
    error.textContent = "saved " + result.relative;
  } catch (e) { error.textContent = e.message; }
}

async function loadHistory() {
  const entries = await api("/history");
  const groups = [];
  for (const entry of entries) {
    const last = groups[groups.length - 1];
    if (last && entry.group && last[0].group === entry.group) last.push(entry); else groups.push([entry]);
  }
  const target = document.getElementById("history");
  target.innerHTML = "";
  for (const group of groups.reverse()) {
    const div = document.createElement("div");
    div.className = "history-group";
    for (const entry of group) {
      const item = document.createElement("div");
      item.className = "history-item";
      item.dataset.item = entry.row.item_id;
      item.innerHTML = `<img src="/files/${entry.row.image}"><div></div>`;
      item.querySelector("div").textContent = `${entry.row.condition} s${entry.row.seed}: ${entry.row.prompt}`;
      div.appendChild(item);
    }
    target.appendChild(div);
  }
}

async function start() {
  const health = await api("/health");
  document.getElementById("info").textContent = `weights ${health.weights} (${health.dtype})` +
    (health.embeddings ? `, saved embeddings ${health.embeddings}` : "") + ` · study ${health.study}`;
  document.getElementById("folder").textContent = health.lab_folder;
  presets = await api("/presets");
  addColumn({name: "baseline"});
  document.getElementById("generate").onclick = generateAll;
  document.getElementById("add-condition").onclick = () => addColumn();
  document.getElementById("encode").onclick = showTokens;
  await loadHistory();
  document.body.dataset.ready = "true";
}
start();
</script>
</body>
</html>
"""
