"""The MUB leaderboard as a Gradio Space: the same table as ``mub leaderboard``, from a results
repository on the Hub or a local folder of submissions, checked against the MUB build they ran on.

Run locally: ``python spaces/leaderboard/app.py [SOURCE]`` (SOURCE: a folder, or ORG/NAME of a Hub
dataset repository; default: the ``MUB_RESULTS`` environment variable). ``MUB_DATASET`` names the
MUB build (a Hub id, or a ``mub build`` folder) whose published items fingerprints submissions must match.

Every submitted string (model names, sources, skip reasons) is shown in table cells as plain text,
never as Markdown or HTML.
"""

from __future__ import annotations

import os
import sys

from mub.errors import EXIT_USER_ERROR, missing_extra

try:
    import gradio as gr
except ModuleNotFoundError as exc:  # one line naming the extra, never a traceback
    print(f"app.py: error: {missing_extra(exc, 'the leaderboard Space') or exc}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)

from mub.report.leaderboard import (
    DISPLAY_COLUMNS,
    INTERVAL_COLUMNS,
    Leaderboard,
    display_table,
    interval_table,
)
from mub.report.leaderboard_files import leaderboard_from
from mub.report.results_file import is_hub_id

ALL = "all submissions (and the paper's rows)"
SKIPPED_COLUMNS = ["Source", "Reason"]
# Pixel widths: wide enough that no header breaks inside a word; the table fits a 1400 px window.
WIDTHS = {"Rank": 64, "Model": 200, "Protocol": 130, "Overall": 90, "Submitted": 104, "Source": 240}
VALUE_WIDTH = 70
INTERVAL_WIDTH = 100  # "[65.24, 89.50] n=40" on two lines

HOW_TO_SUBMIT = """
## How to submit

Only full runs of this benchmark rank: no `--limit`, `--difficulty`, `--misled-count` or unmerged `--shard`,
no `tiny:` test model, no item errors left. Replace `YOUR-ORG/YOUR-MODEL` with your model's Hub id.

1. Install mub from its clone (it is not on PyPI yet; once published: `pip install "mub[torch]"`), then evaluate
   your model on {dataset} under both cues (explicit hints, implicit notes), one run each, into one folder:

```bash
pip install -e ".[torch]"
mub run --model YOUR-ORG/YOUR-MODEL --dataset {dataset} --config all --out runs/YOUR-MODEL
```

2. Submit both runs as one results file (a Hub write token in `HF_TOKEN`):

```bash
{submit}
```

`mub submit` also prints the `model-index` block for your model card, and `--eval-results-pr YOUR-ORG/YOUR-MODEL`
opens a pull request adding `.eval_results/mub.yaml` to the model's repository. The board recomputes every
figure from its counts, checks the items fingerprint against the one {dataset} publishes, and keeps the newest
submission per model and protocol; a file that fails is listed under "Skipped" with the reason.
"""


OTHER_CUES = (
    "Runs under a stage-2 cue other than MUB's own (explicit hint, implicit notes, one fresh request): another cue "
    "(opinion, authority, challenge), several turns, a typographic cue. The board reads the cue from the run settings "
    "each submission records; each cue has its own table, ranked apart, and none is ranked with MUB's."
)


def how_to_submit(dataset: str, results_repo: str) -> str:
    """The submission steps with this Space's own repository ids (no placeholder but the user's model)."""
    if is_hub_id(results_repo):
        submit = f"mub submit runs/YOUR-MODEL --dataset-id {dataset} --to {results_repo}"
    else:  # a board read from a local folder: the results file goes there by hand
        submit = f"mub submit runs/YOUR-MODEL --dataset-id {dataset} --out SUBMISSIONS_FOLDER"
    return HOW_TO_SUBMIT.format(dataset=dataset, submit=submit)


def _frame(rows: list[list], headers: list[str]):
    import pandas as pd  # gradio's own dependency

    return pd.DataFrame(rows, columns=headers)


def _widths(headers: list[str], value_width: int = VALUE_WIDTH) -> list[str]:
    return [f"{WIDTHS.get(name, value_width)}px" for name in headers]


def build_app(source: str, *, dataset: str, results_repo: str) -> gr.Blocks:
    board: Leaderboard = leaderboard_from([source], dataset)
    protocols = [ALL, *board.protocols]

    def tables(protocol: str, search: str, sort_by: str, descending: bool):
        chosen = None if protocol == ALL else protocol
        main = display_table(board, protocol=chosen, search=search, sort_by=sort_by, descending=descending)
        intervals = interval_table(board, protocol=chosen, search=search)
        return _frame(main, DISPLAY_COLUMNS), _frame(intervals, INTERVAL_COLUMNS)

    skipped = [[s.source, s.reason] for s in board.skipped]
    with gr.Blocks(title="MUB leaderboard", fill_width=True) as app:
        gr.Markdown(
            "# MUB leaderboard\nMisleading rate (percent, **lower is better**): among items a model first answered "
            "correctly, the share it abandoned after a misleading cue, per difficulty level. Mean: unweighted mean "
            "of the three levels; Overall: mean of the explicit and implicit means, the ranking key within a "
            "protocol. Exp.: explicit hints; Imp.: implicit notes; med.: medium. Rows marked (paper) are the "
            "published figures, listed after the submissions and never ranked against them. Only MUB's own cues "
            "rank here; runs under other stage-2 cues are in the tab \"Other cues\"."
        )
        with gr.Tab("Leaderboard"):
            with gr.Row():
                protocol = gr.Dropdown(protocols, value=ALL, label="Protocol")
                search = gr.Textbox(label="Search", placeholder="model or source")
                sort_by = gr.Dropdown(DISPLAY_COLUMNS, value="Rank", label="Sort by")
                descending = gr.Checkbox(label="Descending", value=False)
            first = tables(ALL, "", "Rank", False)
            main = gr.Dataframe(
                value=first[0], headers=DISPLAY_COLUMNS, datatype="str", interactive=False, elem_id="board",
                column_widths=_widths(DISPLAY_COLUMNS), wrap=True,
            )  # fmt: skip
            gr.Markdown("### 95% intervals, n and source\nn: the rate's denominator (items answered correctly in stage 1; all items for Acc).")
            intervals = gr.Dataframe(
                value=first[1], headers=INTERVAL_COLUMNS, datatype="str", interactive=False, elem_id="intervals",
                column_widths=_widths(INTERVAL_COLUMNS, INTERVAL_WIDTH), wrap=True,
            )  # fmt: skip
            gr.Markdown("### Skipped")
            gr.Dataframe(
                value=_frame(skipped or [["none", ""]], SKIPPED_COLUMNS), headers=SKIPPED_COLUMNS, datatype="str",
                interactive=False, elem_id="skipped", column_widths=["420px", "800px"], wrap=True,
            )  # fmt: skip
            for control in (protocol, search, sort_by, descending):
                control.change(tables, [protocol, search, sort_by, descending], [main, intervals])
        if board.other_cues:
            # Each other stage-2 cue's table, chosen from a list: never ranked with MUB's, never merged with each other.
            with gr.Tab("Other cues"):
                gr.Markdown(OTHER_CUES)
                cues = list(board.other_cues)
                cue = gr.Dropdown(cues, value=cues[0], label="Stage-2 cue")
                other = gr.Dataframe(
                    value=_frame(display_table(board, cue=cues[0]), DISPLAY_COLUMNS), headers=DISPLAY_COLUMNS,
                    datatype="str", interactive=False, elem_id="other-cues", column_widths=_widths(DISPLAY_COLUMNS), wrap=True,
                )  # fmt: skip
                cue.change(lambda chosen: _frame(display_table(board, cue=chosen), DISPLAY_COLUMNS), [cue], [other])
        with gr.Tab("How to submit"):
            gr.Markdown(how_to_submit(dataset, results_repo))
    return app


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MUB_RESULTS", "")
    dataset = os.environ.get("MUB_DATASET", "")
    if not source or not dataset:
        sys.exit(
            "usage: MUB_DATASET=ORG/NAME app.py SOURCE (a folder of submissions or a Hub dataset repository "
            "ORG/NAME; or set MUB_RESULTS). MUB_DATASET names the MUB build whose card publishes the items fingerprints."
        )
    build_app(source, dataset=dataset, results_repo=os.environ.get("MUB_RESULTS_REPO", source)).launch()
