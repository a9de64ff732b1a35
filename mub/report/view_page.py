"""The page of ``mub view``: one self-contained HTML file that reads ``data.js`` beside it.

Every text of the data (questions, prompts, model outputs) is untrusted and reaches the page
only through ``textContent`` and attribute values set from code: nothing is parsed as markup.
Items are shown a page at a time, so the page stays responsive however many draws a run has.
Filters live in the URL's fragment (``#verdict=flipped&level=high``), so a report can link to
the items behind a figure.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'">
<title>MUB view</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 8px 16px; z-index: 1; }
h1 { font-size: 18px; margin: 0 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: center; }
.controls label { font-size: 12px; color: #555; }
select, input { font-size: 13px; }
#counts { margin-top: 6px; font-size: 13px; }
#paired { margin-top: 4px; font-size: 13px; color: #333; }
main { padding: 8px 16px; max-width: 1400px; }
.item { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 10px 0; padding: 10px; display: flex; gap: 12px; }
.item img { max-width: 192px; max-height: 192px; border: 1px solid #ccc; }
.meta { font-size: 12px; color: #666; }
.question { font-weight: 600; margin: 4px 0; }
.options { margin: 0 0 6px; padding-left: 18px; }
.run { border-top: 1px dashed #ccc; margin-top: 6px; padding-top: 4px; }
.draw { margin: 4px 0 4px 8px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; color: #fff; margin-right: 6px; }
.v-held { background: #009E73; } .v-flipped { background: #D55E00; } .v-corrected { background: #0072B2; }
.v-stayed-wrong { background: #999; } .v-unparsed { background: #CC79A7; } .v-error { background: #000; }
pre { white-space: pre-wrap; background: #f3f3f3; padding: 4px 6px; margin: 2px 0; font-size: 12px; }
details summary { cursor: pointer; font-size: 12px; color: #444; }
nav { margin: 8px 0; }
</style>
</head>
<body>
<header>
<h1>MUB view</h1>
<div class="controls" id="controls"></div>
<div id="counts"></div>
<div id="paired"></div>
</header>
<main><nav id="nav-top"></nav><div id="items"></div><nav id="nav-bottom"></nav></main>
<script>window.MUB_VIEW_START = performance.now();</script>
<script src="data.js"></script>
<script>
"use strict";
const D = window.MUB_VIEW_DATA;
const S = (i) => (i === null || i === undefined ? "" : D.strings[i]);
const PAGE_SIZE = 20;
const state = { page: 0 };
const FILTERS = ["q", "config", "level", "source", "verdict", "run", "parsed", "errors", "a", "b", "relation"];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function select(name, label, options) {
  const wrap = el("label", label + " ");
  const s = el("select");
  s.id = "f-" + name;
  for (const [value, text] of options) { const o = el("option", text); o.value = value; s.appendChild(o); }
  s.addEventListener("change", () => { state.page = 0; writeHash(); render(); });
  wrap.appendChild(s);
  return wrap;
}

function uniq(values) { return Array.from(new Set(values)).sort(); }

function buildControls() {
  const c = document.getElementById("controls");
  const search = el("input"); search.id = "f-q"; search.placeholder = "search questions and outputs"; search.size = 30;
  search.addEventListener("input", () => { state.page = 0; writeHash(); render(); });
  c.appendChild(search);
  const all = [["", "all"]];
  const runs = D.runs.map((r, i) => [String(i), r.label + " · " + r.config + (r.cue ? " · " + r.cue + "/" + r.dialogue : "")]);
  c.appendChild(select("config", "config", all.concat(uniq(D.runs.map((r) => r.config)).map((v) => [v, v]))));
  c.appendChild(select("level", "level", all.concat(["low", "medium", "high", "none"].map((v) => [v, v]))));
  c.appendChild(select("source", "source", all.concat(uniq(D.items.map((i) => i.source)).map((v) => [v, v]))));
  c.appendChild(select("verdict", "verdict", all.concat(D.verdicts.map((v) => [v, v]))));
  c.appendChild(select("run", "run", all.concat(runs)));
  c.appendChild(select("parsed", "stage 1", [["", "all"], ["parsed", "parsed"], ["unparsed", "unparsed"]]));
  c.appendChild(select("errors", "errors", [["", "all"], ["only", "only errors"], ["none", "no errors"]]));
  c.appendChild(select("a", "A", [["", "-"]].concat(runs)));
  c.appendChild(select("b", "B", [["", "-"]].concat(runs)));
  c.appendChild(select("relation", "A vs B", [["", "any"], ["differ", "verdicts differ"],
    ["held-flipped", "held in A, flipped in B"], ["flipped-held", "flipped in A, held in B"]]));
}

function filters() {
  const f = {};
  for (const name of FILTERS) f[name] = document.getElementById("f-" + name).value;
  return f;
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const name of FILTERS) {
    const node = document.getElementById("f-" + name);
    if (params.has(name)) node.value = params.get(name);
  }
}

function writeHash() {
  const params = new URLSearchParams();
  const f = filters();
  for (const name of FILTERS) if (f[name]) params.set(name, f[name]);
  history.replaceState(null, "", "#" + params.toString());
}

function drawMatches(f, runIndex, draw) {
  const run = D.runs[runIndex];
  if (f.run && f.run !== String(runIndex)) return false;
  if (f.config && run.config !== f.config) return false;
  if (f.verdict && draw.verdict !== f.verdict) return false;
  if (f.parsed === "parsed" && draw.s1[2] === null) return false;
  if (f.parsed === "unparsed" && draw.s1[2] !== null) return false;
  if (f.errors === "only" && draw.verdict !== "error") return false;
  if (f.errors === "none" && draw.verdict === "error") return false;
  return true;
}

function itemText(item) {
  if (item._text === undefined) {
    const parts = [S(item.question)].concat(item.options.map(S));
    for (const draws of Object.values(item.runs)) for (const d of draws) {
      parts.push(S(d.s1[1]));
      for (const s of d.s2) parts.push(S(s[2]));
    }
    item._text = parts.join("\n").toLowerCase();
  }
  return item._text;
}

function relationHolds(f, item) {
  if (!f.relation || !f.a || !f.b || f.a === f.b) return true;
  const a = item.runs[f.a] || [], b = item.runs[f.b] || [];
  const byDraw = new Map(b.map((d) => [d.draw, d.verdict]));
  return a.some((d) => {
    if (!byDraw.has(d.draw)) return false;
    const vb = byDraw.get(d.draw);
    if (f.relation === "differ") return d.verdict !== vb;
    if (f.relation === "held-flipped") return d.verdict === "held" && vb === "flipped";
    return d.verdict === "flipped" && vb === "held";
  });
}

function matching(f) {
  const query = f.q.trim().toLowerCase();
  const found = [];
  for (const item of D.items) {
    if (f.level && item.level !== f.level) continue;
    if (f.source && item.source !== f.source) continue;
    if (query && !itemText(item).includes(query)) continue;
    if (!relationHolds(f, item)) continue;
    const draws = [];
    for (const [runIndex, list] of Object.entries(item.runs)) {
      if (f.relation && f.a && f.b && runIndex !== f.a && runIndex !== f.b) continue;
      for (const d of list) if (drawMatches(f, runIndex, d)) draws.push([runIndex, d]);
    }
    if (draws.length) found.push([item, draws]);
  }
  return found;
}

function pairedFigures(f) {
  const out = document.getElementById("paired");
  out.textContent = "";
  if (!f.a || !f.b || f.a === f.b) return;
  // Paired over the items and draws both runs answered: the misleading rate of each among its correct stage-1 answers.
  let n = 0, bothHeld = 0, onlyA = 0, onlyB = 0, bothFlipped = 0, heldA = 0, flipA = 0, heldB = 0, flipB = 0;
  for (const item of D.items) {
    const b = new Map((item.runs[f.b] || []).map((d) => [d.draw, d.verdict]));
    for (const d of item.runs[f.a] || []) {
      if (!b.has(d.draw)) continue;
      n += 1;
      const va = d.verdict, vb = b.get(d.draw);
      if (va === "held") heldA += 1; if (va === "flipped") flipA += 1;
      if (vb === "held") heldB += 1; if (vb === "flipped") flipB += 1;
      if (va === "held" && vb === "held") bothHeld += 1;
      if (va === "flipped" && vb === "held") onlyA += 1;
      if (va === "held" && vb === "flipped") onlyB += 1;
      if (va === "flipped" && vb === "flipped") bothFlipped += 1;
    }
  }
  const rate = (x, t) => (t ? (100 * x / t).toFixed(2) + "%" : "n/a");
  out.textContent = "paired on " + n + " draws: MR(A) " + rate(flipA, heldA + flipA) + ", MR(B) " + rate(flipB, heldB + flipB) +
    "; both held " + bothHeld + ", flipped only in A " + onlyA + ", flipped only in B " + onlyB + ", both flipped " + bothFlipped;
}

function showCounts(found) {
  const counts = {};
  let draws = 0;
  for (const [, list] of found) for (const [, d] of list) { counts[d.verdict] = (counts[d.verdict] || 0) + 1; draws += 1; }
  const node = document.getElementById("counts");
  node.textContent = "";
  node.appendChild(el("span", found.length + " items, " + draws + " draws match", ""));
  node.lastChild.id = "count-summary";
  for (const v of D.verdicts) {
    const span = el("span", " " + v + ": " + (counts[v] || 0));
    span.id = "count-" + v.replace(" ", "-");
    node.appendChild(span);
  }
}

function pre(text) { return el("pre", text); }

function details(summary, children) {
  const d = el("details");
  d.appendChild(el("summary", summary));
  for (const c of children) d.appendChild(c);
  return d;
}

function drawNode(runIndex, d) {
  const node = el("div", null, "draw");
  node.dataset.verdict = d.verdict;
  node.appendChild(el("span", d.verdict, "badge v-" + d.verdict.replace(" ", "-")));
  node.appendChild(el("span", "draw " + d.draw + ": stage 1 " + (d.s1[2] === null ? "unparsed" : d.s1[2]) +
    " → stage 2 " + (d.final === null ? "unparsed" : d.final)));
  node.appendChild(details("stage 1 prompt and output", [pre(S(d.s1[0])), pre(S(d.s1[1]))]));
  d.s2.forEach((s, k) => {
    const turns = s[0].map((t, j) => pre((j % 2 ? "assistant: " : "user: ") + S(t)));
    const label = "stage 2" + (d.s2.length > 1 ? " (" + D.runs[runIndex].stage2_part + " " + (k + 1) + ")" : "") + (s[1] ? ", cue names " + s[1] : "") +
      ": " + (s[3] === null ? "unparsed" : s[3]);
    const shown = [];
    if (s[4]) {  // a typographic run: the image stage 2 showed, the cue drawn in
      const link = el("a"); link.href = D.image_files[s[4]]; link.target = "_blank"; link.rel = "noopener";
      const img = el("img"); img.src = "thumbs/" + s[4] + ".jpg"; img.alt = "stage-2 image with the cue drawn in"; img.loading = "lazy";
      link.appendChild(img); shown.push(link);
    }
    node.appendChild(details(label, shown.concat(turns, [pre(S(s[2]))])));
  });
  if (d.error !== null) node.appendChild(pre("error: " + S(d.error)));
  return node;
}

function itemNode(item, draws) {
  const node = el("div", null, "item");
  node.dataset.id = item.id;
  const link = el("a"); link.href = D.image_files[item.image]; link.target = "_blank"; link.rel = "noopener";
  const img = el("img"); img.src = "thumbs/" + item.image + ".jpg"; img.alt = "item image"; img.loading = "lazy";
  link.appendChild(img); node.appendChild(link);
  const body = el("div");
  body.appendChild(el("div", item.id + " · " + item.source + " · level " + item.level + " · misled count " + item.misled_count, "meta"));
  body.appendChild(el("div", S(item.question), "question"));
  const options = el("ol", null, "options"); options.type = "A";
  for (const o of item.options) options.appendChild(el("li", S(o)));
  if (item.options.length) body.appendChild(options);
  body.appendChild(el("div", "answer: " + item.answer, "meta"));
  const byRun = new Map();
  for (const [runIndex, d] of draws) { if (!byRun.has(runIndex)) byRun.set(runIndex, []); byRun.get(runIndex).push(d); }
  for (const [runIndex, list] of byRun) {
    const run = D.runs[Number(runIndex)];
    const box = el("div", null, "run");
    box.appendChild(el("div", run.label + " · " + run.config + " · " + run.protocol + " · cue " + run.cue + " (" + run.dialogue + ")", "meta"));
    for (const d of list) box.appendChild(drawNode(runIndex, d));
    body.appendChild(box);
  }
  node.appendChild(body);
  return node;
}

function nav(total) {
  for (const id of ["nav-top", "nav-bottom"]) {
    const n = document.getElementById(id);
    n.textContent = "";
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    const prev = el("button", "◀ previous"); prev.disabled = state.page === 0;
    prev.addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
    const next = el("button", "next ▶"); next.disabled = state.page >= pages - 1;
    next.addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
    n.appendChild(prev); n.appendChild(el("span", " page " + (state.page + 1) + " of " + pages + " ")); n.appendChild(next);
  }
}

function render() {
  const f = filters();
  const found = matching(f);
  showCounts(found);
  pairedFigures(f);
  const pages = Math.max(1, Math.ceil(found.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  nav(found.length);
  const list = document.getElementById("items");
  list.textContent = "";
  for (const [item, draws] of found.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE)) list.appendChild(itemNode(item, draws));
}

buildControls();
readHash();
render();
window.MUB_VIEW_READY_MS = performance.now() - window.MUB_VIEW_START;  // data parsed and first page drawn
</script>
</body>
</html>
"""
