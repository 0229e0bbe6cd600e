"""The Review & rate tab: open any earlier edit, rate its candidates, see what was collected, export it all
as a Hugging Face ``datasets`` folder (API names ``open_edit``, ``list_edits``, ``export_dataset``)."""

from __future__ import annotations

import html
import random
from datetime import datetime

import gradio as gr

from feedback.export import read_skipped
from feedback.store import CHECK_COMMAND, StoreError
from studio.context import StudioContext
from studio.history import edit_label
from studio.ratings import counts_markdown, pick_pair
from studio.results import ResultsPanel, new_state

LISTED_EDITS = 200  # edits offered in the tab's list, newest first


def export_markdown(folder: str) -> str:
    """How to open an export: both ``datasets`` entry points read the folder."""
    return (
        f"`{folder}` holds two parts, `candidates` and `ratings`. Open them with\n\n"
        "```python\n"
        "import datasets\n"
        f"ratings = datasets.load_from_disk({folder!r})[\"ratings\"]\n"
        f"candidates = datasets.load_dataset({folder!r}, \"candidates\", split=\"train\")\n"
        "```"
    )


class ReviewTab:
    """Builds the tab's components where it is created (inside ``gr.Tabs``); ``wire`` connects them."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        with gr.Tab("Review & rate", id="review") as self.tab:
            self.state = gr.State(new_state())  # inside the tab, as in EditTab
            self.counts = gr.Markdown(counts_markdown(ctx.store.counts()), elem_id="counts")
            with gr.Row(equal_height=True):
                self.edits = gr.Dropdown(choices=[], value=None, label="Earlier edit", scale=5, elem_id="edits")
                self.refresh_btn = gr.Button("↻ Refresh", scale=1)
            self.panel = ResultsPanel(ctx, "review")
            with gr.Accordion("Export", open=False):
                gr.Markdown("Write every candidate and rating (the blind A/B's too) to a Hugging Face `datasets` "
                            "folder (`save_to_disk` format: Arrow files, images embedded as PNG), under the data "
                            "folder's `datasets/`.")
                with gr.Row(equal_height=True):
                    self.export_btn = gr.Button("Export dataset", scale=0, min_width=160)
                    self.export_msg = gr.Markdown("", elem_id="export-msg")

    def wire(self, rng: random.Random) -> None:
        store, panel, state = self.ctx.store, self.panel, self.state

        def list_edits() -> tuple:
            choices = [(edit_label(r, ratings=True), r["edit_uid"]) for r in store.recent_edits(LISTED_EDITS)]
            return gr.update(choices=choices), counts_markdown(store.counts())

        def open_edit(edit_uid: str | None, st: dict) -> dict:
            if not edit_uid:  # (a dict that names no component would read to Gradio as one value)
                return {state: st}
            ids = [c.id for c in store.edit_candidates(edit_uid)]
            if store.ab_test_ids(ids):  # not listed here: rated in the blind A/B only (see Store.recent_edits)
                gr.Warning("That edit is a held-out test edit of the Fine-tune tab's blind A/B: it is rated there.")
                return {state: st}
            st = dict(st, cand_ids=ids, selected=0, pair=pick_pair(ids, rng))
            return {state: st, **panel.updates(st)}

        self.edits.input(open_edit, [self.edits, state], [state, *panel.outputs], api_name="open_edit")

        def open_latest(current: str | None, st: dict) -> dict:
            """On entering the tab: refresh the list and, if nothing is open yet, open the newest edit."""
            dd, counts = list_edits()
            out = {self.counts: counts}
            choices = dd["choices"]
            if current is None and choices:
                current = choices[0][1]
                out.update(open_edit(current, st))
            out[self.edits] = gr.update(choices=choices, value=current)
            return out

        self.refresh_btn.click(list_edits, None, [self.edits, self.counts], api_name="list_edits")

        self.export_btn.click(lambda: export_message(self.ctx), None, self.export_msg, api_name="export_dataset")
        self.tab.select(open_latest, [self.edits, state], [self.edits, self.counts, state, *panel.outputs],
                        api_visibility="private", show_progress="minimal")


def export_message(ctx: StudioContext) -> str:
    """Export every candidate and rating to a new dataset folder; what the page says about it (what
    was written, what was skipped because its images are lost, or why nothing could be written)."""
    folder = ctx.data_dir / "datasets" / f"dataset-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        ctx.store.export_dataset(folder)
    except StoreError as e:
        gr.Warning(str(e))
        return f"Not exported: {e}"
    skipped = read_skipped(folder)
    c = ctx.store.counts()
    n_c = c["candidates"] - sum(s["kind"] == "candidate" for s in skipped)
    n_r = c["ratings"] - sum(s["kind"] == "rating" for s in skipped)
    msg = f"✓ Exported {n_c} candidates and {n_r} ratings."
    if skipped:
        lines = "".join(f"<br>· {s['kind']} {s['id']}: {html.escape(s['why'])}" for s in skipped[:10])
        more = f"<br>· … and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        msg += (f"<br>Skipped {len(skipped)} whose stored images are missing or damaged (listed in "
                f"`{folder / 'skipped.json'}`):{lines}{more}<br>`{CHECK_COMMAND} --data {ctx.data_dir}` "
                "reports them and can prune them.")
    return msg + "\n\n" + export_markdown(str(folder))
