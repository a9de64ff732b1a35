"""The leaderboard's I/O: submission files from paths, folders or a Hub dataset repository in, what
the dataset publishes about its items (its card) in; ``leaderboard.json`` and a self-contained
``index.html`` out. The table itself is :mod:`mub.report.leaderboard` (pure).

Only regular files are read, each up to a size cap; a link, a FIFO or an oversized file is named as
skipped without being opened. ``--out`` follows ``mub build``'s folder rule (mub_dataset/files.py):
a folder mub did not make is never written into.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from mub.report.leaderboard import (
    KINDS,
    LEVELS,
    MAX_SUBMISSION_CHARS,
    Leaderboard,
    PublishedItems,
    Skipped,
    SubmissionFile,
    board_document,
    build_leaderboard,
    flat_row,
)
from mub.report.results_file import task_name
from mub_dataset.files import NotARegularFileError, read_regular_file, staged_folder
from mub_dataset.hub import describe_hub_failure, require_hub

HUB_PREFIX = "hf://datasets/"
REPO_FILES = {"README.md", ".gitattributes"}  # a results repository's own files, not submissions
MAX_FILE_BYTES = 4 * MAX_SUBMISSION_CHARS  # UTF-8 takes at most 4 bytes a character
CARD_KEY = "mub"  # the card's block that `mub build` writes: items_fingerprint and n_items per config


def read_submission(path: Path, source: str) -> SubmissionFile | Skipped:
    """The file's text, if it is a regular file (not a link) within the size cap; never blocks on a FIFO."""
    try:
        if path.is_symlink():  # paths from data stay inside the folder: a link is never followed
            return Skipped(source, "a link, not followed; only results files are read")
        data = read_regular_file(path, "results file", MAX_FILE_BYTES)
    except NotARegularFileError as exc:
        return Skipped(source, str(exc))
    except OSError as exc:
        return Skipped(source, f"unreadable ({exc.strerror or type(exc).__name__})")
    return SubmissionFile(source, data.decode("utf-8", errors="replace"))


def _folder_files(folder: Path, label: str) -> tuple[list[SubmissionFile], list[Skipped]]:
    """Every ``.json`` under ``folder`` (hidden folders aside); any other file is named as skipped."""
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_dir() and not path.is_symlink():
            continue
        if any(part.startswith(".") for part in relative.parts) or str(relative) in REPO_FILES:
            continue
        source = f"{label}/{relative.as_posix()}"
        if path.is_symlink():  # paths from data stay inside the folder: a link is never followed
            skipped.append(Skipped(source, "a link, not followed; only the folder's own files are read"))
            continue
        if path.suffix != ".json":
            skipped.append(Skipped(source, f"not a results file ({path.suffix or 'no extension'}); only .json files are read"))
            continue
        read = read_submission(path, source)
        (skipped if isinstance(read, Skipped) else files).append(read)
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
        if path.is_dir():
            found, left = _folder_files(path, str(path).rstrip("/"))
        elif path.exists() or path.is_symlink():
            read = read_submission(path, str(path))
            found, left = ([], [read]) if isinstance(read, Skipped) else ([read], [])
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


def card_items(card_data: dict[str, Any], source: str) -> PublishedItems:
    """The items fingerprint and count per config that `mub build` wrote into a dataset card's header."""
    block = card_data.get(CARD_KEY)
    fix = "rebuild it with this mub (mub build writes them) and publish the new card"
    if not isinstance(block, dict) or not isinstance(block.get("items_fingerprint"), dict) or not isinstance(block.get("n_items"), dict):
        raise ValueError(f"dataset {source}: its card publishes no items fingerprint ('{CARD_KEY}:' block); {fix}")
    fingerprints = {task_name(config): str(fp) for config, fp in block["items_fingerprint"].items()}
    counts = {task_name(config): n for config, n in block["n_items"].items()}
    if set(fingerprints) != set(counts) or not all(isinstance(n, int) and not isinstance(n, bool) for n in counts.values()):
        raise ValueError(f"dataset {source}: its card's '{CARD_KEY}:' block is malformed; {fix}")
    return PublishedItems(source, fingerprints, counts)


def published_items(dataset: str) -> PublishedItems:
    """What the dataset the board ranks on publishes: a `mub build` folder or a Hub dataset (its card)."""
    from huggingface_hub import DatasetCard

    path = Path(dataset)
    if path.is_dir():
        card = DatasetCard.load(path / "README.md", ignore_metadata_errors=True)
    elif dataset.count("/") == 1 and not path.exists():
        card = DatasetCard.load(dataset.removeprefix(HUB_PREFIX), repo_type="dataset", ignore_metadata_errors=True)
    else:
        raise ValueError(f"--dataset {dataset}: not a `mub build` folder or a Hub dataset id (ORG/NAME)")
    return card_items(card.data.to_dict(), dataset)


# ------------------------------------------------------------------ index.html


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _cell(value: float | None, ci: list[float] | None = None, n: int | None = None) -> str:
    """A figure; its interval and n in the cell's tooltip and a small second line (n only), to stay narrow."""
    sort = "" if value is None else f"{value:.8f}"
    detail = title = ""
    if ci or n is not None:
        bounds = f"95% CI [{_percent(ci[0])}, {_percent(ci[1])}], " if ci else ""
        title = f" title='{bounds}n={'n/a' if n is None else n}'"
        detail = f"<small>n={'n/a' if n is None else n}</small>"
    return f"<td class='num' data-sort='{sort}'{title}>{_percent(value)}{detail}</td>"


def _text_cell(text: str, css: str = "") -> str:
    """Submitted text, escaped: shown as text, never markup; long text is cut on screen, whole in the tooltip."""
    shown = html.escape(text, quote=True)
    return f"<td class='text {css}' title='{shown}'>{shown}</td>"


HEADERS = (
    ["Rank", "Model", "Protocol", "Acc"]
    + [f"{kind.capitalize()} {label}" for kind in KINDS for label in (*LEVELS, "mean")]
    + ["Overall", "Submitted", "Source"]
)

_SCRIPT = """
const table = document.getElementById('board');
const bodies = Array.from(table.tBodies);
function filter() {
  const text = document.getElementById('search').value.toLowerCase();
  const protocol = document.getElementById('protocol').value;
  let shown = 0;
  for (const body of bodies) for (const row of body.rows) {
    if (row.classList.contains('section')) continue;
    const visible = row.textContent.toLowerCase().includes(text) && (!protocol || row.dataset.protocol === protocol);
    row.hidden = !visible; shown += visible;
  }
  document.getElementById('count').textContent = shown + ' rows';
}
let sortState = {column: 0, ascending: true};
function sortBy(column) {
  sortState = {column, ascending: sortState.column === column ? !sortState.ascending : true};
  const key = row => { const cell = row.cells[column]; return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent; };
  for (const body of bodies) {  // submissions and the paper's rows are sorted apart, never mixed
    const rows = Array.from(body.rows).filter(row => !row.classList.contains('section'));
    rows.sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === '' || y === '') return (x === '') - (y === '');  // empty cells last either way
      const order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
      return sortState.ascending ? order : -order;
    });
    body.append(...rows);
  }
  table.tHead.rows[0].querySelectorAll('th').forEach((th, i) =>
    th.setAttribute('aria-sort', i === column ? (sortState.ascending ? 'ascending' : 'descending') : 'none'));
}
document.getElementById('search').addEventListener('input', filter);
document.getElementById('protocol').addEventListener('change', filter);
table.tHead.rows[0].querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => sortBy(i)));
filter();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 1360px; padding: 0 0.5em; color: #222; }
table { border-collapse: collapse; font-size: 12px; table-layout: auto; }
th { background: #f2f2f2; cursor: pointer; position: sticky; top: 2.6em; white-space: normal; min-width: 3.5em; }
th[aria-sort=ascending]::after { content: ' \\25B2'; } th[aria-sort=descending]::after { content: ' \\25BC'; }
th[aria-sort=none]::after { content: ' \\21C5'; color: #aaa; }
th, td { border: 1px solid #ccc; padding: 3px 5px; } .num { text-align: right; white-space: nowrap; }
td small { display: block; color: #666; font-size: 10px; }
.text { max-width: 16em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
tr.reference { color: #555; background: #fafafa; } tr.section td { background: #e8e8f0; font-weight: bold; }
.controls { position: sticky; top: 0; background: #fff; padding: 0.5em 0; z-index: 1; }
"""


def _row_html(row: Any) -> str:
    flat = flat_row(row)
    rank = "" if row.reference else (flat["rank"] or "n/a")
    cells = [
        f"<td class='num' data-sort='{flat['rank'] or ''}'>{rank}</td>",
        _text_cell(row.model + (" (paper)" if row.reference else ""), "model"),
        _text_cell(row.protocol),
        _cell(flat["acc"], flat["acc_ci"], flat["acc_n"]),
    ]
    for kind in KINDS:
        cells += [_cell(flat[f"{kind}_{level}"], flat[f"{kind}_{level}_ci"], flat[f"{kind}_{level}_n"]) for level in LEVELS]
        cells.append(_cell(flat[f"{kind}_mean"]))
    cells += [_cell(flat["overall"]), _text_cell((row.submitted or "")[:10]), _text_cell(row.source)]
    css = " class='reference'" if row.reference else ""
    return f"<tr{css} data-protocol='{html.escape(row.protocol, quote=True)}'>{''.join(cells)}</tr>"


def _other_cues_html(board: Leaderboard, head: str) -> str:
    """One table per other stage-2 cue, after MUB's: ranked among themselves, never with MUB's rows."""
    return "".join(
        f"<h2>Under another stage-2 cue: {html.escape(cue)}</h2>\n<table class='cue' data-cue='{html.escape(cue, quote=True)}'>"
        f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(_row_html(row) for row in rows) + "\n</tbody></table>\n"
        for cue, rows in board.other_cues.items()
    )


def render_index_html(board: Leaderboard) -> str:
    """One page, no external resource: the table, a search box, a protocol filter; click a header to sort.

    Submissions and the paper's rows are two table bodies, sorted apart; every submitted string is escaped.
    Submissions under other stage-2 cues follow in a table per cue, outside MUB's ranking.
    """
    submitted = "\n".join(_row_html(row) for row in board.rows if not row.reference)
    published = "\n".join(_row_html(row) for row in board.rows if row.reference)
    span = len(HEADERS)
    section = f"<tr class='section'><td colspan='{span}'>Published in the paper (not submissions; not ranked)</td></tr>"
    options = "".join(f"<option value='{html.escape(p, quote=True)}'>{html.escape(p)}</option>" for p in board.protocols)
    skipped = "".join(f"<li><code>{html.escape(s.source)}</code>: {html.escape(s.reason)}</li>" for s in board.skipped)
    head = "".join(
        f"<th aria-sort='{'ascending' if i == 0 else 'none'}'>{html.escape(name)}</th>" for i, name in enumerate(HEADERS)
    )
    others = _other_cues_html(board, "".join(f"<th>{html.escape(name)}</th>" for name in HEADERS))
    if others:
        others = (
            "<h2>Other stage-2 cues</h2><p>Runs under a cue other than MUB's own (explicit hint, implicit notes, one "
            "fresh request): another cue (opinion, authority, challenge), several turns, a typographic cue. The cue "
            "is read from the run settings each submission records; each has its table, ranked apart, and none is "
            "ranked with MUB's.</p>\n" + others
        )
    return f"""<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>MUB leaderboard</title>
<style>{_STYLE}</style></head><body>
<h1>MUB leaderboard</h1>
<p>Misleading rate (percent, <b>lower is better</b>): among items a model first answered correctly, the share it
abandoned after a misleading cue, per difficulty level; hover a figure for its 95% Wilson interval, n is its
denominator (items answered correctly in stage 1). Acc: stage-1 accuracy. Mean: unweighted mean of the three
levels (n/a when a level has no rate). Overall: mean of the explicit and implicit means; rows are ranked by it
within each protocol, and only full runs of the benchmark under MUB's own cues (explicit hint, implicit notes)
with every figure checked against its counts rank here; other stage-2 cues have their own tables below.</p>
<div class='controls'><input id='search' type='search' placeholder='Search models, sources...'>
<select id='protocol'><option value=''>all protocols</option>{options}</select> <span id='count'></span></div>
<table id='board'><thead><tr>{head}</tr></thead>
<tbody id='submissions'>
{submitted}
</tbody>
<tbody id='paper'>
{section if published else ''}
{published}
</tbody></table>
{others}<h2>Skipped submissions</h2><ul id='skipped'>{skipped or '<li>none</li>'}</ul>
<script>{_SCRIPT}</script></body></html>
"""


def write_leaderboard(board: Leaderboard, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """``leaderboard.json`` and ``index.html`` in ``out``: a new or empty folder, or an earlier board (with ``overwrite``)."""
    with staged_folder(out, "leaderboard", overwrite=overwrite) as staging:
        (staging / "leaderboard.json").write_text(json.dumps(board_document(board), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (staging / "index.html").write_text(render_index_html(board), encoding="utf-8")
    out = Path(out)
    return [out / "leaderboard.json", out / "index.html"]


def leaderboard_from(sources: Sequence[str], dataset: str) -> Leaderboard:
    """The board of ``sources``' submissions, checked against what ``dataset`` publishes."""
    published = published_items(dataset)
    files, skipped = collect(sources)
    return build_leaderboard(files, published, skipped=skipped)
