"""EARL Studio: the Gradio app (edit → stream → compare → rate, history, review, model picker).

``build_app(ctx)`` returns the Blocks; ``launch_kwargs(ctx)`` the matching ``launch()`` arguments
(theme, CSS, keyboard-shortcut JS, allowed paths). Extra tabs (e.g. "Fine-tune") are added by a module
exposing ``build_finetune_tab(ctx)``, found at build time if it exists (see ``TAB_HOOKS``).
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import os
import random
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.history import breadcrumbs, tree_choices
from studio.imaging import PngFiles, diff_heatmap
from studio.models import ModelRegistry
from studio.ratings import counts_markdown, pick_pair
from studio.runner import EditFn, EditRequest, Snapshot, stream_edit
from studio.store import Candidate, Rating, Store, StoreError
from studio.ui_assets import CSS, HEAD, SHORTCUTS_HELP, SHORTCUTS_JS

# Modules that may add a tab: each defines ``build_finetune_tab(ctx: StudioContext) -> None`` and is
# called inside the app's ``gr.Tabs()`` (so it creates its own ``gr.Tab``). Missing modules are skipped.
TAB_HOOKS = ("studio.finetune_tab", "training.studio_tab")
MAX_N = 8


@dataclass
class StudioContext:
    store: Store
    registry: ModelRegistry
    default_model: str | None  # registry key selected at start (None: nothing to run yet)
    examples_dir: Path | None = None
    edit_fn: EditFn | None = None  # engine.edit unless a caller injects another
    auth_enabled: bool = False
    max_upload_bytes: int = 20 * 1024 * 1024
    no_model_message: str = ""  # shown when default_model is None
    _cancels: dict[str, threading.Event] = field(default_factory=dict)
    _previews: PngFiles | None = None
    # the page's one "Rater" box (above the tabs), set by build_app so tabs rate under the same name
    rater_box: Any = None

    @property
    def previews(self) -> PngFiles:
        if self._previews is None:
            self._previews = PngFiles(self.store.data_dir / "previews")
        return self._previews

    @property
    def data_dir(self) -> Path:
        return self.store.data_dir

    @property
    def exports_dir(self) -> Path:
        d = self.store.data_dir / "exports"
        d.mkdir(exist_ok=True)
        return d

    def rater(self, request: gr.Request | None, typed: str | None) -> str:
        """The logged-in user when auth is on, else the name typed in the rater box."""
        user = getattr(request, "username", None) if request is not None else None
        if user:
            return str(user)
        return (typed or "").strip() or default_rater()

    def examples(self) -> list[str]:
        if self.examples_dir is None or not self.examples_dir.is_dir():
            return []
        exts = {".png", ".jpg", ".jpeg", ".webp"}
        return [str(p) for p in sorted(self.examples_dir.iterdir()) if p.suffix.lower() in exts][:24]


RESTORED_EDITS = 12  # edits a new page shows in its history tree


def default_rater() -> str:
    return os.environ.get("EARL_RATER") or os.environ.get("USER") or "local"


def _friendly_image_errors() -> None:
    """Make every gr.Image input turn an unreadable upload into a readable UI error, not a traceback.

    Patched on the class, once: Gradio rebuilds a component for a session from its constructor
    arguments whenever a handler updates it (``blocks.postprocess_data``), so a per-instance patch was
    lost after the first such update (an example picked, a result continued from) and an unreadable
    upload then showed Gradio's raw "Could not preprocess input component" error. Subclassing is the
    other way, but Gradio writes a .pyi stub next to any module that subclasses a component."""
    if getattr(gr.Image.preprocess, "_friendly", False):
        return
    inner = gr.Image.preprocess

    def preprocess(self: gr.Image, payload: Any) -> Any:
        try:
            return inner(self, payload)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(
                f"That file could not be read as an image ({type(e).__name__}). Use a PNG, JPEG or WebP photo."
            ) from e

    preprocess._friendly = True  # type: ignore[attr-defined]
    gr.Image.preprocess = preprocess  # type: ignore[method-assign]


def photo_input(**kwargs: Any) -> gr.Image:
    """gr.Image for the photo to edit: unreadable uploads get a readable UI error (``_friendly_image_errors``)."""
    _friendly_image_errors()
    return gr.Image(**kwargs)


# ------------------------------------------------------------------------------------ session state
def new_state() -> dict[str, Any]:
    # cand_ids: the candidates shown (gallery order); selected: index into it; pair: [left, right]
    # ids shown as A/B; parent: candidate whose output is the current source; edits: this session's.
    return {"cand_ids": [], "selected": 0, "pair": [], "parent": None, "edits": [], "source_hash": None}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _caption(c: Candidate) -> str:
    return f"#{c.idx + 1} · seed {c.seed}"


def _placeholder(ctx: StudioContext, size: tuple[int, int]) -> str:
    return ctx.previews.path(Image.new("RGB", size, (226, 228, 234)))


# --------------------------------------------------------------------------------------------- app
def build_app(ctx: StudioContext) -> gr.Blocks:
    store, registry = ctx.store, ctx.registry
    rng = random.Random()
    examples = ctx.examples()
    model_choices = [(c.label, c.key) for c in registry.choices()]

    # delete_cache: streamed previews are written to Gradio's cache; drop files older than an hour.
    with gr.Blocks(title="EARL Studio", delete_cache=(1800, 3600)) as demo:
        edit_state = gr.State(new_state())
        review_state = gr.State(new_state())

        with gr.Row(elem_id="topbar", equal_height=True):
            gr.HTML(
                "<div id='brand'><span class='logo'>◧</span> <b>EARL Studio</b>"
                "<span class='tagline'>edit photos with words · rate the results · teach the model</span></div>"
            )
            rater_box = gr.Textbox(
                value=default_rater(), label="Rater", scale=0, min_width=170, elem_id="rater",
                interactive=not ctx.auth_enabled,
                info="signed-in user" if ctx.auth_enabled else "your name, stored with ratings",
            )

        ctx.rater_box = rater_box
        with gr.Tabs() as tabs:
            # ======================================================================== Edit tab
            with gr.Tab("Edit", id="edit"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=320, elem_id="controls"):
                        photo = photo_input(
                            label="Photo", type="filepath", format="png", image_mode=None,
                            sources=["upload", "clipboard"], height=280, elem_id="photo",
                        )
                        example_box = None
                        if examples:
                            example_box = gr.Examples(examples=[[p] for p in examples], inputs=[photo],
                                                      label="Example photos", examples_per_page=12)
                        else:
                            gr.Markdown("<span class='muted'>No example photos shipped yet — upload your own.</span>")
                        crumbs = gr.Markdown("📷 original photo", elem_id="crumbs")
                        instruction = gr.Textbox(
                            label="Instruction", placeholder="e.g. make it black and white — press Enter to run",
                            lines=1, max_lines=3, elem_id="instruction", autofocus=True,
                        )
                        with gr.Row():
                            run_btn = gr.Button("Edit ▶", variant="primary", elem_id="run", scale=3)
                            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1,
                                                   interactive=False)
                        start = _sampling_for(ctx, ctx.default_model)
                        with gr.Accordion("Sampling", open=True, elem_id="sampling"):
                            with gr.Row():
                                n_slider = gr.Slider(1, MAX_N, value=4, step=1, label="Candidates (N)", elem_id="n")
                                think = gr.Checkbox(label="Think first", value=False, elem_id="think",
                                                    info="write reasoning before the image")
                            with gr.Row():
                                temperature = gr.Slider(0.05, 2.0, value=start["temperature"], step=0.05, label="Temperature",
                                                        elem_id="temperature")
                                top_p = gr.Slider(0.05, 1.0, value=start["top_p"], step=0.01, label="Top-p")
                            top_k = gr.Slider(1, 4096, value=start["top_k"], step=1, label="Top-k")
                            with gr.Row(equal_height=True):
                                seed = gr.Number(value=0, precision=0, label="Seed (candidate i uses seed + i)",
                                                 elem_id="seed", minimum=0, maximum=2**31 - 1)
                                randomize = gr.Checkbox(value=True, label="New random seed each run",
                                                        elem_id="randomize")
                        with gr.Accordion("Model", open=False, elem_id="model"):
                            with gr.Row(equal_height=True):
                                model_dd = gr.Dropdown(
                                    choices=model_choices, value=ctx.default_model, label="Bundle",
                                    elem_id="model-picker", allow_custom_value=False, scale=5,
                                )
                                rescan_btn = gr.Button("↻", scale=0, min_width=44, elem_id="rescan",
                                                       size="sm")
                            with gr.Row(equal_height=True):
                                path_box = gr.Textbox(label="…or a bundle folder on this machine",
                                                      placeholder="/path/to/bundle (holds bundle.json)", scale=3)
                                load_btn = gr.Button("Use it", scale=1)
                            model_info = gr.Markdown(_model_md(ctx, ctx.default_model))
                        with gr.Accordion("History", open=True, elem_id="history-box"):
                            history = gr.Radio(
                                choices=[], value=None, label="Edit tree — click a node to go back to it",
                                elem_id="history", elem_classes=["history-tree"],
                            )
                    with gr.Column(scale=7, min_width=420, elem_id="results"):
                        status = gr.Markdown(
                            _idle_status(ctx), elem_id="status",
                        )
                        reasoning = gr.Textbox(label="Reasoning", lines=3, max_lines=8, interactive=False,
                                               visible=False, elem_id="reasoning", autoscroll=True)
                        edit_panel = _results_panel("edit", ctx)
            # ======================================================================= Review tab
            with gr.Tab("Review & rate", id="review") as review_tab:
                counts_md = gr.Markdown(counts_markdown(store.counts()), elem_id="counts")
                with gr.Row(equal_height=True):
                    edits_dd = gr.Dropdown(choices=[], value=None, label="Earlier edit", scale=5, elem_id="edits")
                    refresh_btn = gr.Button("↻ Refresh", scale=1)
                review_panel = _results_panel("review", ctx)
                with gr.Accordion("Export", open=False):
                    gr.Markdown("Write every candidate and rating to a Hugging Face `datasets` folder (parquet, "
                                "images included) — load it with `datasets.load_dataset(folder, \"ratings\")`.")
                    with gr.Row(equal_height=True):
                        export_btn = gr.Button("Export dataset", scale=0, min_width=160)
                        export_msg = gr.Markdown("")
            for hook in TAB_HOOKS:
                if _module_exists(hook):
                    importlib.import_module(hook).build_finetune_tab(ctx)
        gr.Markdown(SHORTCUTS_HELP, elem_id="shortcuts")

        # ============================================================================ wiring
        def run(photo_path, instr, n, think_, temp, tk, tp, seed_, rand, model_key, rater_typed, st,
                request: gr.Request) -> Iterator[dict]:
            st = dict(st)
            instr = (instr or "").strip()
            sid = request.session_hash or "local"
            if not photo_path:
                gr.Warning("Upload a photo (or pick an example) first.")
                yield {status: "⚠️ **Upload a photo first** — drop one on the left or pick an example."}
                return
            if not instr:
                gr.Warning("Type what you want changed, e.g. “make it black and white”.")
                yield {status: "⚠️ **Type an instruction** — what should change in the photo?"}
                return
            if not model_key:
                gr.Warning("No model is loaded.")
                yield {status: f"⚠️ {ctx.no_model_message or 'Pick a model under “Model”.'}"}
                return
            try:
                bundle = registry.get(model_key)
            except ValueError as e:
                gr.Warning(str(e))
                yield {status: f"⚠️ {e}"}
                return
            try:
                source, parent = _source_image(ctx, photo_path, st, bundle)
            except ValueError as e:  # ImageInputError is a ValueError with a user-facing message
                gr.Warning(str(e))
                yield {status: f"⚠️ {e}"}
                return
            n = max(1, min(MAX_N, int(n or 1)))
            seed_ = rng.randrange(2**31 - n) if rand or seed_ is None else max(0, int(seed_))
            req = EditRequest(
                source=source, instruction=instr, n=n, think=bool(think_), seed=seed_,
                temperature=float(temp), top_k=int(tk), top_p=float(tp), parent_id=parent,
            )
            cancel = threading.Event()
            ctx._cancels[sid] = cancel
            ctx.previews.prune()
            edit_fn = ctx.edit_fn or _engine_edit()
            yield {
                status: f"⏳ Starting {n} candidate{'s' * (n > 1)} · seed {seed_}…",
                seed: seed_, run_btn: gr.update(interactive=False), cancel_btn: gr.update(interactive=True),
                reasoning: gr.update(value="", visible=bool(think_)),
                edit_panel.gallery: [(_placeholder(ctx, source.size), f"#{i + 1} · seed {seed_ + i}") for i in range(n)],
            }
            snap: Snapshot | None = None
            try:
                for snap in stream_edit(bundle, store, req, edit_fn=edit_fn, cancel=cancel,
                                        rater=ctx.rater(request, rater_typed)):
                    if not snap.finished:
                        yield {
                            status: _progress_md(snap),
                            reasoning: _reasoning_text(snap) if think_ else gr.skip(),
                            edit_panel.gallery: [
                                (ctx.previews.path(im) if im is not None else _placeholder(ctx, source.size),
                                 f"#{i + 1} · seed {snap.seeds[i]}"
                                 + ("" if snap.done[i] else f" · row {snap.rows_done[i]}/{snap.total_rows}"))
                                for i, im in enumerate(snap.images)
                            ],
                        }
            except Exception as e:  # an engine failure: say so in the UI, keep the app usable
                gr.Warning(f"The edit failed: {e}")
                yield {status: f"❌ The edit failed: {e}", run_btn: gr.update(interactive=True),
                       cancel_btn: gr.update(interactive=False)}
                return
            finally:
                ctx._cancels.pop(sid, None)
            assert snap is not None
            ids = [c for c in snap.candidate_ids if c is not None]
            if ids:
                st.update(cand_ids=ids, selected=0, pair=pick_pair(ids, rng), parent=st.get("parent"))
                st["edits"] = [*st["edits"], snap.edit_uid]
            out = {
                status: _final_md(snap),
                reasoning: _reasoning_text(snap) if think_ else gr.skip(),
                run_btn: gr.update(interactive=True), cancel_btn: gr.update(interactive=False),
                edit_state: st,
                history: gr.update(choices=tree_choices(store, st["edits"]),
                                   value=f"cand:{ids[0]}" if ids else None),
            }
            out.update(_panel_updates(ctx, edit_panel, st))
            yield out

        run_inputs = [photo, instruction, n_slider, think, temperature, top_k, top_p, seed, randomize,
                      model_dd, rater_box, edit_state]
        run_outputs = [status, reasoning, seed, run_btn, cancel_btn, edit_state, history, *edit_panel.outputs]
        # One event for both triggers, ignored while it runs: Enter then a click on Edit ▶ ran two edits
        # (two events queue one after the other even with the button disabled by the first).
        gr.on([run_btn.click, instruction.submit], run, run_inputs, run_outputs, api_name="edit",
              concurrency_limit=1, concurrency_id="edit", show_progress="hidden", trigger_mode="once")

        def cancel_run(request: gr.Request) -> str:
            ev = ctx._cancels.get(request.session_hash or "local")
            if ev is None:
                return "Nothing is running."
            ev.set()
            return "⏹ Cancelling — keeping the candidates that already finished…"

        cancel_btn.click(cancel_run, None, status, queue=False, api_name="cancel")

        # -- model picker
        def pick_model(key: str | None) -> tuple:
            # each bundle starts from the sampling settings measured for it (bundle.json "sampling")
            s = _sampling_for(ctx, key)
            return _model_md(ctx, key), s["temperature"], s["top_k"], s["top_p"]

        model_dd.change(pick_model, model_dd, [model_info, temperature, top_k, top_p], api_visibility="private")

        def use_path(path: str) -> tuple:
            try:
                key = registry.add_path(path)
                bundle = registry.get(key)
            except ValueError as e:
                gr.Warning(str(e))
                return gr.skip(), f"⚠️ {e}"
            return gr.update(choices=[(c.label, c.key) for c in registry.choices()], value=key), registry.describe(bundle)

        load_btn.click(use_path, path_box, [model_dd, model_info], api_visibility="private")

        def rescan(current: str | None) -> dict:
            """Pick up bundles added to <data>/bundles/ since start (e.g. by a fine-tuning job)."""
            return gr.update(choices=[(c.label, c.key) for c in registry.choices()], value=current)

        rescan_btn.click(rescan, model_dd, model_dd, api_name="rescan_models")

        # -- history / continue
        def go_to(node: str | None, st: dict) -> dict:
            st = dict(st)
            if not node:
                return {}
            if node.startswith("src:"):
                h = node[4:]
                st["parent"] = None
                return {photo: str(store.image_path(h)), crumbs: breadcrumbs(store, None), edit_state: st}
            cid = int(node[5:])
            c = store.candidate(cid)
            siblings = store.edit_candidates(c.edit_uid)
            st.update(parent=cid, cand_ids=[s.id for s in siblings], selected=[s.id for s in siblings].index(cid))
            st["pair"] = pick_pair(st["cand_ids"], rng)
            out = {photo: str(store.image_path(c.output_hash)), crumbs: breadcrumbs(store, cid), edit_state: st,
                   status: f"↩︎ Source is now result #{cid} — type the next instruction."}
            out.update(_panel_updates(ctx, edit_panel, st))
            return out

        history.input(go_to, [history, edit_state], [photo, crumbs, edit_state, status, *edit_panel.outputs],
                      api_name="history_go")

        def continue_from(st: dict) -> dict:
            ids = st.get("cand_ids") or []
            if not ids:
                gr.Warning("Run an edit first.")
                return {}
            cid = ids[min(st.get("selected", 0), len(ids) - 1)]
            out = go_to(f"cand:{cid}", st)
            out[history] = gr.update(choices=tree_choices(store, st["edits"]), value=f"cand:{cid}")
            return out

        edit_panel.continue_btn.click(
            continue_from, edit_state, [photo, crumbs, edit_state, status, history, *edit_panel.outputs],
            api_name="continue_from",
        )

        def new_upload(st: dict) -> tuple:
            st = dict(st)
            st["parent"] = None
            return st, breadcrumbs(store, None)

        photo.upload(new_upload, edit_state, [edit_state, crumbs], api_visibility="private")

        def restore_history(st: dict, request: gr.Request) -> tuple:
            # A new page (a reload, or the one a restarted server reloads) starts with the newest edits
            # in its history tree, the signed-in user's with --auth, so earlier results can be continued.
            user = getattr(request, "username", None) if request is not None else None
            rows = store.recent_edits(RESTORED_EDITS, rater=str(user) if user else None)
            st = dict(st, edits=[r["edit_uid"] for r in reversed(rows)])  # a new page has none of its own yet
            return st, gr.update(choices=tree_choices(store, st["edits"]), value=None)

        demo.load(restore_history, edit_state, [edit_state, history], api_visibility="private")
        if example_box is not None:  # an example is a new photo too (the breadcrumb said the old lineage)
            example_box.load_input_event.then(new_upload, edit_state, [edit_state, crumbs], api_visibility="private")

        # -- review tab
        def list_edits() -> tuple:
            rows = store.recent_edits(200)
            choices = [
                (f"{datetime.fromtimestamp(r['created_at']).strftime('%b %d %H:%M')} · “{r['instruction'][:50]}” · "
                 f"{_plural(r['n'], 'candidate')} · {_plural(r['n_ratings'], 'rating')}", r["edit_uid"])
                for r in rows
            ]
            return gr.update(choices=choices), counts_markdown(store.counts())

        def open_edit(edit_uid: str | None, st: dict) -> dict:
            if not edit_uid:
                return {}
            st = dict(st)
            cands = store.edit_candidates(edit_uid)
            st.update(cand_ids=[c.id for c in cands], selected=0, pair=pick_pair([c.id for c in cands], rng))
            out = {review_state: st}
            out.update(_panel_updates(ctx, review_panel, st))
            return out

        edits_dd.input(open_edit, [edits_dd, review_state], [review_state, *review_panel.outputs],
                       api_name="open_edit")

        def open_latest(current: str | None, st: dict) -> dict:
            """On entering the tab: refresh the list and, if nothing is open yet, open the newest edit."""
            dd, counts = list_edits()
            out = {counts_md: counts}
            choices = dd["choices"]
            if current is None and choices:
                current = choices[0][1]
                out.update(open_edit(current, st))
            out[edits_dd] = gr.update(choices=choices, value=current)
            return out

        refresh_btn.click(list_edits, None, [edits_dd, counts_md], api_name="list_edits")

        def export() -> str:
            folder = ctx.data_dir / "datasets" / f"dataset-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
            store.export_dataset(folder)
            c = store.counts()
            return f"✓ Exported {c['candidates']} candidates and {c['ratings']} ratings to `{folder}`"

        export_btn.click(export, None, export_msg, api_name="export_dataset")
        review_tab.select(open_latest, [edits_dd, review_state],
                          [edits_dd, counts_md, review_state, *review_panel.outputs], api_visibility="private",
                          show_progress="minimal")

        for panel, pstate, prefix in ((edit_panel, edit_state, ""), (review_panel, review_state, "review_")):
            _wire_panel(ctx, panel, pstate, rater_box, [counts_md], rng, prefix)
        del tabs
    return demo


# ----------------------------------------------------------------------------------- results panel
def _results_panel(prefix: str, ctx: StudioContext) -> SimpleNamespace:
    """Gallery + compare + rate widgets (one per tab). Returns the components as a namespace."""
    p = SimpleNamespace()
    p.gallery = gr.Gallery(
        label="Candidates — click one to compare and rate it", columns=4, height=None, format="png",
        object_fit="contain", allow_preview=False, elem_id=f"{prefix}-gallery", elem_classes=["cands"],
        buttons=["download"], interactive=False,
    )
    with gr.Row(equal_height=True):
        p.slider = gr.ImageSlider(label="Before / after", format="png", type="pil", elem_id=f"{prefix}-slider",
                                  max_height=360, buttons=["fullscreen"], interactive=False)
        p.heatmap = gr.Image(label="What changed (difference)", format="png", type="pil", interactive=False,
                             elem_id=f"{prefix}-heatmap", height=360, buttons=["fullscreen"])
    with gr.Row(equal_height=True, elem_classes=["cand-bar"]):
        p.info = gr.Markdown("", elem_classes=["cand-info"])
        p.download = gr.DownloadButton("⬇ PNG", value=None, size="sm", scale=0, min_width=90,
                                       elem_id=f"{prefix}-download", interactive=False)
        p.continue_btn = gr.Button("Continue editing from this ↪", size="sm", scale=0, min_width=200,
                                   visible=prefix == "edit", elem_id=f"{prefix}-continue")
    with gr.Group(elem_classes=["rate-box"]):
        with gr.Row(equal_height=True, elem_classes=["rate-row"]):
            gr.HTML("<span class='rate-label'>This one</span>", padding=False)
            p.up = gr.Button("👍", size="sm", elem_classes=["kb-up", "rate-btn"], min_width=48, scale=0)
            p.down = gr.Button("👎", size="sm", elem_classes=["kb-down", "rate-btn"], min_width=48, scale=0)
            p.stars = [
                gr.Button("★" * s, size="sm", elem_classes=[f"kb-star-{s}", "rate-btn", "star-btn"],
                          min_width=40 + 10 * s, scale=0)
                for s in range(1, 6)
            ]
            p.best = gr.Button("🏆 Best of all", size="sm", elem_classes=["kb-best", "rate-btn"], scale=0,
                               min_width=120)
    with gr.Group(elem_classes=["pair-box"]):
        with gr.Row(equal_height=True):
            p.pair_a = gr.Image(label="A", format="png", type="pil", interactive=False, height=220,
                                elem_id=f"{prefix}-pair-a", buttons=[])
            p.pair_b = gr.Image(label="B", format="png", type="pil", interactive=False, height=220,
                                elem_id=f"{prefix}-pair-b", buttons=[])
        with gr.Row(equal_height=True, elem_classes=["rate-row"]):
            p.pa = gr.Button("A is better", size="sm", elem_classes=["kb-a", "rate-btn"])
            p.pb = gr.Button("B is better", size="sm", elem_classes=["kb-b", "rate-btn"])
            p.tie = gr.Button("Tie", size="sm", elem_classes=["kb-tie", "rate-btn"])
            p.both_bad = gr.Button("Both bad", size="sm", elem_classes=["kb-bad", "rate-btn"])
            p.next_pair = gr.Button("Another pair ⟳", size="sm", elem_classes=["kb-next"])
    p.msg = gr.Markdown("", elem_classes=["rate-msg"])
    p.outputs = [p.gallery, p.slider, p.heatmap, p.info, p.download, p.pair_a, p.pair_b, p.msg]
    return p


def _panel_updates(ctx: StudioContext, p: SimpleNamespace, st: dict) -> dict:
    """Every panel component's value for state ``st`` (after a run, on select, on opening an edit)."""
    store = ctx.store
    ids = st.get("cand_ids") or []
    if not ids:
        return {p.gallery: [], p.slider: None, p.heatmap: None, p.info: "", p.download: gr.update(value=None, interactive=False),
                p.pair_a: None, p.pair_b: None, p.msg: ""}
    cands = store.candidates(ids)
    out = {p.gallery: gr.update(value=[(str(store.image_path(c.output_hash)), _caption(c)) for c in cands],
                                selected_index=st.get("selected", 0))}
    out.update(_selected_updates(ctx, p, st, cands))
    out.update(_pair_updates(ctx, p, st))
    out[p.msg] = ""
    return out


def _selected_updates(ctx: StudioContext, p: SimpleNamespace, st: dict, cands: list[Candidate] | None = None) -> dict:
    store = ctx.store
    ids = st["cand_ids"]
    i = min(max(0, int(st.get("selected", 0))), len(ids) - 1)
    c = cands[i] if cands is not None else store.candidate(ids[i])
    before, after = store.load_image(c.source_hash), store.load_image(c.output_hash)
    heat, mean_diff = diff_heatmap(before, after)
    heat_path = ctx.previews.path(heat)
    t = c.timings
    timing = f" · {t['total']:.2f} s" if "total" in t else ""
    # what stands, as training counts it: later A/B clicks do not push a star rating out of view
    mine = ", ".join(_standing_label(r, c.id) for r in store.standing_ratings(candidate_id=c.id))
    info = (
        f"**#{c.idx + 1}** of {len(ids)} · seed `{c.seed}` · log-prob {c.logprob_sum:.1f} over {len(c.tokens)} tokens"
        f"{timing} · mean change {mean_diff * 100:.1f}%"
        + (f"<br><span class='muted'>rated: {mine}</span>" if mine else "")
        + (f"<br><span class='muted'>💭 {html.escape(_clip(c.reasoning, 300))}</span>" if c.reasoning.strip() else "")
    )
    export = ctx.exports_dir / f"earl-edit-{c.id}-seed{c.seed}.png"
    if not export.exists():
        shutil.copyfile(store.image_path(c.output_hash), export)
    slider = (str(store.image_path(c.source_hash)), str(store.image_path(c.output_hash)))
    return {p.slider: slider, p.heatmap: heat_path, p.info: info,
            p.download: gr.update(value=str(export), interactive=True)}


def _pair_updates(ctx: StudioContext, p: SimpleNamespace, st: dict) -> dict:
    pair = st.get("pair") or []
    if len(pair) != 2:
        return {p.pair_a: None, p.pair_b: None}
    a, b = ctx.store.candidates(pair)
    return {
        p.pair_a: gr.update(value=str(ctx.store.image_path(a.output_hash)), label=f"A (#{a.idx + 1})"),
        p.pair_b: gr.update(value=str(ctx.store.image_path(b.output_hash)), label=f"B (#{b.idx + 1})"),
    }


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _standing_label(r: Rating, cid: int) -> str:
    """A rating as seen from candidate ``cid`` (an A/B decision: did it win?)."""
    if r.kind == "pair" and r.value in ("A", "B"):
        return "A/B: won" if r.candidate_ids["AB".index(r.value)] == cid else "A/B: lost"
    return _rating_label(r.kind, r.value, cid)


def _rating_label(kind: str, value: str, cid: int) -> str:
    if kind == "thumb":
        return "👍" if value == "up" else "👎"
    if kind == "star":
        return "★" * int(value)
    if kind == "best_of_n":
        return "🏆 best" if int(value) == cid else "not best"
    return {"A": "A/B: A", "B": "A/B: B", "tie": "A/B: tie", "both_bad": "A/B: both bad"}.get(value, value)


def _wire_panel(ctx: StudioContext, p: SimpleNamespace, pstate: gr.State, rater_box: gr.Textbox,
                counts_out: list, rng: random.Random, prefix: str) -> None:
    store = ctx.store

    def select(st: dict, evt: gr.SelectData) -> dict:
        st = dict(st)
        if not st.get("cand_ids"):
            return {}
        st["selected"] = int(evt.index)
        out = {pstate: st}
        out.update(_selected_updates(ctx, p, st))
        return out

    p.gallery.select(select, pstate, [pstate, p.slider, p.heatmap, p.info, p.download], api_visibility="private")

    def rate(kind: str, value: Any) -> Callable:
        def handler(st: dict, typed: str, request: gr.Request) -> dict:
            ids = st.get("cand_ids") or []
            if not ids:
                gr.Warning("Nothing to rate yet — run an edit first.")
                return {p.msg: "⚠️ Nothing to rate yet."}
            sel = ids[min(int(st.get("selected", 0)), len(ids) - 1)]
            rater = ctx.rater(request, typed)
            try:
                if kind in ("thumb", "star"):
                    rid = store.add_rating(rater=rater, kind=kind, value=value, candidate_ids=[sel])
                    what = f"{_rating_label(kind, str(value), sel)} for candidate #{ids.index(sel) + 1}"
                elif kind == "best_of_n":
                    if len(ids) < 2:
                        return {p.msg: "⚠️ Best-of-N needs at least two candidates."}
                    rid = store.add_rating(rater=rater, kind=kind, value=sel, candidate_ids=ids, shown_order=ids)
                    what = f"🏆 candidate #{ids.index(sel) + 1} is the best of {len(ids)}"
                else:  # pair
                    pair = st.get("pair") or []
                    if len(pair) != 2:
                        return {p.msg: "⚠️ A/B needs at least two candidates."}
                    # candidate_ids = [A, B] as shown (A left): the shown order is part of the data.
                    rid = store.add_rating(rater=rater, kind="pair", value=value, candidate_ids=pair, shown_order=pair)
                    what = f"A/B: {_rating_label('pair', value, 0)[5:]}"
            except StoreError as e:
                gr.Warning(str(e))
                return {p.msg: f"⚠️ {e}"}
            out = {p.msg: f"✓ Saved {what} · rating {rid} by <b>{html.escape(rater)}</b>"}
            for c in counts_out:
                out[c] = counts_markdown(store.counts())
            if kind == "pair":  # move on to a fresh pair so the rater can keep going with the keys
                st = dict(st)
                st["pair"] = pick_pair(ids, rng, avoid=st.get("pair"))
                out[pstate] = st
                out.update(_pair_updates(ctx, p, st))
            else:
                out.update(_selected_updates(ctx, p, st))
            return out

        return handler

    outs = [p.msg, pstate, p.pair_a, p.pair_b, p.slider, p.heatmap, p.info, p.download, *counts_out]
    common = dict(inputs=[pstate, rater_box], outputs=outs)
    p.up.click(rate("thumb", "up"), api_name=f"{prefix}thumb_up", **common)
    p.down.click(rate("thumb", "down"), api_name=f"{prefix}thumb_down", **common)
    for s, btn in enumerate(p.stars, 1):
        btn.click(rate("star", s), api_name=f"{prefix}star_{s}", **common)
    p.best.click(rate("best_of_n", None), api_name=f"{prefix}best_of_n", **common)
    p.pa.click(rate("pair", "A"), api_name=f"{prefix}pair_a", **common)
    p.pb.click(rate("pair", "B"), api_name=f"{prefix}pair_b", **common)
    p.tie.click(rate("pair", "tie"), api_name=f"{prefix}pair_tie", **common)
    p.both_bad.click(rate("pair", "both_bad"), api_name=f"{prefix}pair_both_bad", **common)

    def next_pair(st: dict) -> dict:
        st = dict(st)
        st["pair"] = pick_pair(st.get("cand_ids") or [], rng, avoid=st.get("pair"))
        out = {pstate: st}
        out.update(_pair_updates(ctx, p, st))
        return out

    p.next_pair.click(next_pair, pstate, [pstate, p.pair_a, p.pair_b], api_visibility="private")


# --------------------------------------------------------------------------------------- helpers
def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def _engine_edit() -> EditFn:
    from engine.api import edit

    return edit


def _source_image(ctx: StudioContext, photo_path: str, st: dict, bundle: Any) -> tuple[Image.Image, int | None]:
    """The model's input and its parent candidate. If the photo is the output of the candidate the
    user continued from (pixel-identical), that stored image is used as is and linked as parent."""
    from engine.image_io import load_image, prepare_image

    parent = st.get("parent")
    if parent is not None:
        c = ctx.store.candidate(int(parent))
        prev = ctx.store.load_image(c.output_hash)
        shown = load_image(photo_path, max_bytes=ctx.max_upload_bytes)
        if shown.size == prev.size and np.array_equal(np.asarray(shown), np.asarray(prev)):
            return prev, c.id
    cfg = bundle.config
    return prepare_image(photo_path, cfg.image_area, cfg.spatial_factor, max_bytes=ctx.max_upload_bytes), None


def _model_md(ctx: StudioContext, key: str | None) -> str:
    if not key:
        return f"⚠️ {ctx.no_model_message or 'No model selected.'}"
    try:
        return ctx.registry.describe(ctx.registry.get(key))
    except ValueError as e:
        return f"⚠️ {e}"


def _sampling_for(ctx: StudioContext, key: str | None) -> dict[str, float]:
    from engine.bundle import SAMPLING_DEFAULTS, sampling_defaults

    if key:
        try:
            return sampling_defaults(ctx.registry.get(key).config)
        except ValueError:
            pass  # the model info box shows the error
    return dict(SAMPLING_DEFAULTS)


def _idle_status(ctx: StudioContext) -> str:
    if ctx.default_model is None:
        return f"⚠️ {ctx.no_model_message}"
    return "Upload a photo, type an instruction and press **Enter**. Candidates appear here row by row."


def _progress_md(s: Snapshot) -> str:
    done = sum(s.done)
    rows = sum(s.rows_done)
    total = s.total_rows * len(s.done)
    fp = f" · first preview {s.first_preview_s:.2f} s" if s.first_preview_s is not None else ""
    pct = int(100 * rows / total) if total else 0
    return f"⏳ **Generating** — {done}/{len(s.done)} done · {pct}% of rows{fp} · {s.elapsed_s:.1f} s" + _reading_md(s)


def _reading_md(s: Snapshot) -> str:
    """How the instruction was read, and the model's own limits, on a line of their own (empty when unread)."""
    out = f"<br>💬 {html.escape(s.understood)}" if s.understood else ""
    return out + (f"<br>⚠️ {html.escape(s.notice)}" if s.notice else "")


def _final_md(s: Snapshot) -> str:
    fp = f"first preview **{s.first_preview_s:.2f} s**" if s.first_preview_s is not None else "no preview"
    n_ok = sum(c is not None for c in s.candidate_ids)
    head = "⏹ **Cancelled**" if s.cancelled else ("✅ **Done**" if n_ok else "❌ **No result**")
    errs = "".join(f"<br>⚠️ {e}" for e in s.errors)
    kept = f"{n_ok}/{len(s.done)} candidates" if s.cancelled else f"{n_ok} candidate{'s' * (n_ok != 1)}"
    seeds = f"seed {s.seeds[0]}" if len(s.seeds) == 1 else f"seeds {s.seeds[0]}…{s.seeds[-1]}"
    return f"{head} — {kept} · {fp} · total **{s.elapsed_s:.2f} s** · {seeds}{_reading_md(s)}{errs}"


def _reasoning_text(s: Snapshot) -> str:
    from engine.reasoning_text import plain  # grid boxes as places in the photo

    parts = [f"[{i + 1}] {plain(t.strip())}" for i, t in enumerate(s.reasoning) if t.strip()]
    return "\n".join(parts)


def launch_kwargs(ctx: StudioContext) -> dict[str, Any]:
    """Arguments for ``demo.launch``: look, shortcuts, and which folders may be served."""
    allowed = [str(ctx.store.images_dir), str(ctx.exports_dir), str(ctx.previews.folder)]
    if ctx.examples_dir is not None and ctx.examples_dir.is_dir():
        allowed.append(str(ctx.examples_dir))
    return {
        "theme": gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
                                # Local fonts only: the studio must work offline.
                                font=["Inter", "system-ui", "Segoe UI", "sans-serif"],
                                font_mono=["ui-monospace", "SFMono-Regular", "monospace"]),
        "css": CSS,
        "js": SHORTCUTS_JS,
        "head": HEAD,
        "allowed_paths": allowed,
        # The database and anything else under the data folder is never served.
        "blocked_paths": [str(ctx.store.db_path), str(ctx.store.data_dir / "bundles")],
        "max_file_size": ctx.max_upload_bytes,
        "footer_links": ["api"],
    }
