"""The blind A/B page: one self-contained HTML file (no network, no external assets).

A run on random weights opens with a red notice saying so. The page reads its pairs from an embedded JSON block, shows one pair at a time
(prompt, image left, image right), and records a choice per pair with the
buttons or the keys 1 / 2 / 3 (left / right / tie) and arrows to move. Votes
persist in localStorage, are mirrored into ``<script id="votes-json">`` (so a
headless browser can read them), and the "Download votes" button saves them as
a JSON file for ``read_votes``.
"""

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Blind A/B: __TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1rem 2rem; background: #111; color: #eee; }
  #prompt { font-size: 1.05rem; margin: .5rem 0 1rem; max-height: 6.5em; overflow: auto; white-space: pre-wrap; }
  .pair { display: flex; gap: 1rem; }
  .side { flex: 1; text-align: center; }
  .side img { min-width: 256px; max-width: 100%; max-height: 70vh; border: 4px solid transparent;
              image-rendering: pixelated; }
  #provenance { background: #7a1f1f; color: #fff; font-weight: bold; padding: .5rem 1rem; margin-bottom: .5rem; }
  .side.chosen img { border-color: #4caf50; }
  button { font-size: 1rem; padding: .5rem 1.2rem; margin: .4rem; cursor: pointer; }
  button.chosen { background: #4caf50; color: #fff; }
  #bar { display: flex; align-items: center; gap: 1rem; flex-wrap: wrap; }
  #done { color: #8f8; }
</style>
</head>
<body>
__NOTICE__<h2>Which image is better? (<span id="progress"></span>)</h2>
<div id="bar">
  <label>Rater <input id="rater" size="12" placeholder="your name"></label>
  <button id="prev">&larr; previous</button>
  <button id="next">next &rarr;</button>
  <button id="download">Download votes</button>
  <span id="done"></span>
</div>
<div id="prompt"></div>
<div class="pair">
  <div class="side" id="side-left"><img id="img-left" alt="left image"><br>
    <button id="vote-left" data-choice="left">Left is better (1)</button></div>
  <div class="side" id="side-right"><img id="img-right" alt="right image"><br>
    <button id="vote-right" data-choice="right">Right is better (2)</button></div>
</div>
<div style="text-align:center"><button id="vote-tie" data-choice="tie">About the same (3)</button></div>
<script id="ab-data" type="application/json">__DATA__</script>
<script id="votes-json" type="application/json">{}</script>
<script>
(function () {
  const DATA = JSON.parse(document.getElementById("ab-data").textContent);
  const KEY = "llm-dit-ab:" + DATA.page_id;
  let votes = {};
  try { votes = JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { votes = {}; }
  let current = 0;
  const $ = (id) => document.getElementById(id);

  function record() {
    const rater = $("rater").value.trim() || "anonymous";
    const list = DATA.pairs.filter((p) => votes[p.pair_id]).map((p) => {
      const choice = votes[p.pair_id].choice;
      const winner = choice === "tie" ? "tie" : (choice === p.control_side ? "control" : "condition");
      return {
        pair_id: p.pair_id, condition: p.condition, control: p.control, prompt_index: p.prompt_index,
        seed: p.seed, left_item_id: p.left.item_id, right_item_id: p.right.item_id,
        control_side: p.control_side, choice: choice, winner: winner, time: votes[p.pair_id].time,
      };
    });
    return { format: DATA.format, page_id: DATA.page_id, run: DATA.run, seed: DATA.seed, rater: rater,
             pairs_total: DATA.pairs.length, votes: list };
  }

  function save() {
    try { localStorage.setItem(KEY, JSON.stringify(votes)); } catch (e) { /* private mode: DOM copy only */ }
    $("votes-json").textContent = JSON.stringify(record());
    const n = Object.keys(votes).length;
    $("done").textContent = n === DATA.pairs.length ? "All pairs voted: download your votes." : "";
  }

  function render() {
    const p = DATA.pairs[current];
    $("progress").textContent = (current + 1) + " / " + DATA.pairs.length + ", voted " + Object.keys(votes).length;
    $("prompt").textContent = p.prompt;
    $("img-left").src = p.left.src;
    $("img-right").src = p.right.src;
    const choice = votes[p.pair_id] ? votes[p.pair_id].choice : null;
    for (const side of ["left", "right", "tie"]) {
      $("vote-" + side).classList.toggle("chosen", choice === side);
    }
    $("side-left").classList.toggle("chosen", choice === "left");
    $("side-right").classList.toggle("chosen", choice === "right");
  }

  function vote(choice) {
    votes[DATA.pairs[current].pair_id] = { choice: choice, time: new Date().toISOString() };
    save();
    const next = DATA.pairs.findIndex((p, i) => i > current && !votes[p.pair_id]);
    if (next >= 0) { current = next; }
    render();
  }

  function download() {
    const blob = new Blob([JSON.stringify(record(), null, 1)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    const rater = ($("rater").value.trim() || "anonymous").replace(/[^A-Za-z0-9_-]/g, "_");
    a.download = "votes_" + DATA.page_id + "_" + rater + ".json";
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  for (const side of ["left", "right", "tie"]) {
    $("vote-" + side).addEventListener("click", () => vote(side));
  }
  $("prev").addEventListener("click", () => { current = Math.max(0, current - 1); render(); });
  $("next").addEventListener("click", () => { current = Math.min(DATA.pairs.length - 1, current + 1); render(); });
  $("download").addEventListener("click", download);
  $("rater").addEventListener("change", save);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT") return;
    const keys = { "1": "left", "2": "right", "3": "tie" };
    if (keys[e.key]) vote(keys[e.key]);
    if (e.key === "ArrowLeft") { current = Math.max(0, current - 1); render(); }
    if (e.key === "ArrowRight") { current = Math.min(DATA.pairs.length - 1, current + 1); render(); }
  });
  window.abVotes = record;
  save();
  render();
})();
</script>
</body>
</html>
"""
