"""The leaderboard's I/O: submission files from paths, folders or a Hub dataset repository in;
``leaderboard.json`` and a self-contained ``index.html`` out. The table itself is
:mod:`mub.report.leaderboard` (pure).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

from mub.report.leaderboard import (
    LEVELS,
    Leaderboard,
    Skipped,
    SubmissionFile,
    board_document,
    build_leaderboard,
    flat_row,
)
from mub.report.rows import KINDS
from mub_dataset.hub import describe_hub_failure, require_hub

HUB_PREFIX = "hf://datasets/"
REPO_FILES = {"README.md", ".gitattributes"}  # a results repository's own files, not submissions


def _folder_files(folder: Path, label: str) -> tuple[list[SubmissionFile], list[Skipped]]:
    """Every ``.json`` under ``folder`` (hidden folders aside); any other file is named as skipped."""
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or str(relative) in REPO_FILES:
            continue
        source = f"{label}/{relative.as_posix()}"
        if path.suffix == ".json":
            files.append(SubmissionFile(source, path.read_text(encoding="utf-8", errors="replace")))
        else:
            skipped.append(Skipped(source, f"not a results file ({path.suffix or 'no extension'}); only .json files are read"))
    return files, skipped


def hub_folder(repo_id: str) -> Path:
    """A local snapshot of a Hub dataset repository's JSON files (huggingface_hub's cache)."""
    from huggingface_hub import snapshot_download

    require_hub(f"Hub dataset {repo_id}")
    return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["*.json", "**/*.json"]))


def collect(sources: Sequence[str]) -> tuple[list[SubmissionFile], list[Skipped]]:
    """Submission files from files, folders and Hub dataset repositories (``hf://datasets/ORG/NAME`` or ``ORG/NAME``)."""
    files: list[SubmissionFile] = []
    skipped: list[Skipped] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            files.append(SubmissionFile(str(path), path.read_text(encoding="utf-8", errors="replace")))
            continue
        if path.is_dir():
            found, left = _folder_files(path, str(path).rstrip("/"))
        elif source.startswith(HUB_PREFIX) or source.count("/") == 1:
            repo_id = source.removeprefix(HUB_PREFIX).strip("/")
            try:
                found, left = _folder_files(hub_folder(repo_id), repo_id)
            except Exception as exc:  # one unreachable or missing source never sinks the board
                reason = describe_hub_failure(exc)
                if reason is None:
                    raise
                found, left = [], [Skipped(source, reason)]
        else:
            raise ValueError(f"{source}: no such file or folder, and not a Hub dataset id (ORG/NAME)")
        files += found
        skipped += left
    return files, skipped


# ------------------------------------------------------------------ index.html


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _cell(value: float | None, ci: list[float] | None = None, n: int | None = None) -> str:
    sort = "" if value is None else f"{value:.8f}"
    detail = ""
    if ci or n is not None:
        bounds = f"[{_percent(ci[0])}, {_percent(ci[1])}] " if ci else ""
        detail = f"<br><small>{bounds}n={'–' if n is None else n}</small>"
    return f"<td class='num' data-sort='{sort}'>{_percent(value)}{detail}</td>"


HEADERS = (
    ["Rank", "Model", "Protocol", "Acc"]
    + [f"{kind.capitalize()} {label}" for kind in KINDS for label in (*LEVELS, "mean")]
    + ["Overall", "Submitted", "Source"]
)

_SCRIPT = """
const table = document.getElementById('board'), rows = () => Array.from(table.tBodies[0].rows);
function filter() {
  const text = document.getElementById('search').value.toLowerCase();
  const protocol = document.getElementById('protocol').value;
  let shown = 0;
  for (const row of rows()) {
    const visible = row.textContent.toLowerCase().includes(text) && (!protocol || row.dataset.protocol === protocol);
    row.hidden = !visible; shown += visible;
  }
  document.getElementById('count').textContent = shown + ' rows';
}
let sortState = {column: -1, ascending: true};
function sortBy(column) {
  sortState = {column, ascending: sortState.column === column ? !sortState.ascending : true};
  const key = row => { const cell = row.cells[column]; return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent; };
  const sorted = rows().sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === '' || y === '') return (x === '') - (y === '');  // empty cells last either way
    const order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
    return sortState.ascending ? order : -order;
  });
  table.tBodies[0].append(...sorted);
}
document.getElementById('search').addEventListener('input', filter);
document.getElementById('protocol').addEventListener('change', filter);
table.tHead.rows[0].querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => sortBy(i)));
filter();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 13px; } th { background: #f2f2f2; cursor: pointer; }
th, td { border: 1px solid #ccc; padding: 4px 8px; white-space: nowrap; } .num { text-align: right; }
small { color: #666; } tr.reference { color: #555; background: #fafafa; } .controls { margin: 1em 0; }
"""


def render_index_html(board: Leaderboard) -> str:
    """One page, no external resource: the table, a search box, a protocol filter; click a header to sort."""
    body = []
    for row in board.rows:
        flat = flat_row(row)
        cells = [
            f"<td class='num' data-sort='{flat['rank'] or ''}'>{flat['rank'] or ''}</td>",
            f"<td>{html.escape(row.model)}{' <small>(paper)</small>' if row.reference else ''}</td>",
            f"<td>{html.escape(row.protocol)}</td>",
            _cell(flat["acc"], flat["acc_ci"], flat["acc_n"]),
        ]
        for kind in KINDS:
            cells += [_cell(flat[f"{kind}_{level}"], flat[f"{kind}_{level}_ci"], flat[f"{kind}_{level}_n"]) for level in LEVELS]
            cells.append(_cell(flat[f"{kind}_mean"]))
        cells += [_cell(flat["overall"]), f"<td>{html.escape(row.submitted or '')}</td>", f"<td>{html.escape(row.source)}</td>"]
        css = " class='reference'" if row.reference else ""
        body.append(f"<tr{css} data-protocol='{html.escape(row.protocol, quote=True)}'>{''.join(cells)}</tr>")
    options = "".join(f"<option value='{html.escape(p, quote=True)}'>{html.escape(p)}</option>" for p in board.protocols)
    skipped = "".join(f"<li><code>{html.escape(s.source)}</code>: {html.escape(s.reason)}</li>" for s in board.skipped)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in HEADERS)
    return f"""<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>MUB leaderboard</title>
<style>{_STYLE}</style></head><body>
<h1>MUB leaderboard</h1>
<p>Misleading rate (percent): among items a model first answered correctly, the share it abandoned after a
misleading cue, per difficulty level, with 95% Wilson intervals and n (items answered correctly in stage 1).
Acc: stage-1 accuracy. Mean: unweighted mean of the three levels. Overall: mean of the explicit and implicit
means; rows are ranked by it within each protocol (lower holds answers better). Rows marked (paper) are the
published figures, not submissions.</p>
<div class='controls'><input id='search' type='search' placeholder='Search models, sources...'>
<select id='protocol'><option value=''>all protocols</option>{options}</select> <span id='count'></span></div>
<table id='board'><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Skipped submissions</h2><ul id='skipped'>{skipped or '<li>none</li>'}</ul>
<script>{_SCRIPT}</script></body></html>
"""


def write_leaderboard(board: Leaderboard, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = out / "leaderboard.json"
    document.write_text(json.dumps(board_document(board), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    page = out / "index.html"
    page.write_text(render_index_html(board), encoding="utf-8")
    return [document, page]


def leaderboard_from(sources: Sequence[str]) -> Leaderboard:
    files, skipped = collect(sources)
    return build_leaderboard(files, skipped=skipped)
