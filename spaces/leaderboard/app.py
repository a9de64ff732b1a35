"""The MUB leaderboard as a Gradio Space: the same table as ``mub leaderboard``, from a results
repository on the Hub or a local folder of submissions.

Run locally: ``python spaces/leaderboard/app.py [SOURCE]`` (SOURCE: a folder, or ORG/NAME of a Hub
dataset repository; default: the ``MUB_RESULTS`` environment variable).
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

ALL = "all protocols"

HOW_TO_SUBMIT = """
## How to submit

1. Install mub from its clone (it is not on PyPI yet; once published: `pip install "mub[torch]"`), then evaluate
   your model on the Hub build of MUB under both cues (explicit hints, implicit notes), one run each:

```bash
pip install -e ".[torch]"
mub run --model ORG/MODEL --dataset {dataset} --config all --out runs/MODEL
```

2. Submit both runs as one results file; it goes to `ORG/MODEL/results_<time>.json` in this leaderboard's
   results repository (a Hub write token in `HF_TOKEN`):

```bash
mub submit runs/MODEL --dataset-id {dataset} --to {results}
```

`mub submit` also prints the `model-index` block for your model card. Submissions are checked when the
board is built: the results-file schema, the protocol, the items fingerprint (the same items as the other
submissions), and one submission per model and protocol (the newest counts). A file that fails is listed
under "Skipped" with the reason.
"""


def _frame(rows: list[list], headers: list[str]):
    import pandas as pd  # gradio's own dependency

    return pd.DataFrame(rows, columns=headers)


def build_app(source: str, *, results_repo: str = "ORG/mub-results", dataset: str = "ORG/mub") -> gr.Blocks:
    board: Leaderboard = leaderboard_from([source])
    protocols = [ALL, *board.protocols]

    def tables(protocol: str, search: str, sort_by: str, descending: bool):
        chosen = None if protocol == ALL else protocol
        main = display_table(board, protocol=chosen, search=search, sort_by=sort_by, descending=descending)
        intervals = interval_table(board, protocol=chosen, search=search)
        return _frame(main, DISPLAY_COLUMNS), _frame(intervals, INTERVAL_COLUMNS)

    skipped = "\n".join(f"- `{s.source}`: {s.reason}" for s in board.skipped) or "none"
    with gr.Blocks(title="MUB leaderboard") as app:
        gr.Markdown(
            "# MUB leaderboard\nMisleading rate (percent): among items a model first answered correctly, the share "
            "it abandoned after a misleading cue, per difficulty level. Mean: unweighted mean of the levels; "
            "Overall: mean of the explicit and implicit means, the ranking key within a protocol (lower holds "
            "answers better). Rows marked (paper) are the published figures."
        )
        with gr.Tab("Leaderboard"):
            with gr.Row():
                protocol = gr.Dropdown(protocols, value=protocols[1] if len(protocols) > 1 else ALL, label="Protocol")
                search = gr.Textbox(label="Search", placeholder="model or source")
                sort_by = gr.Dropdown(DISPLAY_COLUMNS, value="Rank", label="Sort by")
                descending = gr.Checkbox(label="Descending", value=False)
            first = tables(protocol.value, "", "Rank", False)
            main = gr.Dataframe(value=first[0], headers=DISPLAY_COLUMNS, interactive=False, elem_id="board", wrap=True)
            gr.Markdown("### 95% intervals and n\nn: the rate's denominator (items answered correctly in stage 1; all items for Acc).")
            intervals = gr.Dataframe(value=first[1], headers=INTERVAL_COLUMNS, interactive=False, elem_id="intervals")
            gr.Markdown(f"### Skipped\n{skipped}", elem_id="skipped")
            for control in (protocol, search, sort_by, descending):
                control.change(tables, [protocol, search, sort_by, descending], [main, intervals])
        with gr.Tab("How to submit"):
            gr.Markdown(HOW_TO_SUBMIT.format(dataset=dataset, results=results_repo))
    return app


if __name__ == "__main__":
    source = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MUB_RESULTS", "")
    if not source:
        sys.exit("usage: app.py SOURCE (a folder of submissions or a Hub dataset repository ORG/NAME), or set MUB_RESULTS")
    build_app(
        source,
        results_repo=os.environ.get("MUB_RESULTS_REPO", source),
        dataset=os.environ.get("MUB_DATASET", "ORG/mub"),
    ).launch()
