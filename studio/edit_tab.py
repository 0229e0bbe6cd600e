"""The Edit tab: photo + instruction → N candidates streamed row by row → compare, rate, continue.

The side panel (``studio.side_panel``) holds the inputs and the history; the results panel
(``studio.results``) the candidates. This module wires the run, cancel, history and continue events
(API names ``edit``, ``cancel``, ``history_go``, ``continue_from``, ``earlier_edits``, ``open_earlier``)."""

from __future__ import annotations

import html
import random
import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image

from engine.reasoning_text import plain
from studio.context import StudioContext
from studio.history import breadcrumbs, earlier_choices, tree_choices
from studio.ratings import pick_pair
from studio.results import ResultsPanel, new_state, shown
from studio.runner import EditFn, EditRequest, Snapshot, stream_edit
from studio.side_panel import MAX_N, SidePanel
from studio.tempfiles import touch
from studio.uploads import rejected, source_image

EARLIER_EDITS = 12  # edits listed under "Earlier edits"


def progress_markdown(s: Snapshot) -> str:
    done = sum(s.done)
    rows = sum(s.rows_done)
    total = sum(s.rows_total) or s.total_rows * len(s.done)
    fp = f" · first preview {s.first_preview_s:.2f} s" if s.first_preview_s is not None else ""
    pct = int(100 * rows / total) if total else 0
    return f"**Generating** — {done}/{len(s.done)} done · {pct}% of rows{fp} · {s.elapsed_s:.1f} s" + reading_markdown(s)


def reading_markdown(s: Snapshot) -> str:
    """How the instruction was read, and the model's own limits, on lines of their own (empty when unread)."""
    out = f"<br>{html.escape(s.understood)}" if s.understood else ""
    return out + (f"<br>Note: {html.escape(s.notice)}" if s.notice else "")


def final_markdown(s: Snapshot) -> str:
    fp = f"first preview **{s.first_preview_s:.2f} s**" if s.first_preview_s is not None else "no preview"
    n_ok = sum(c is not None for c in s.candidate_ids)
    head = "**Cancelled**" if s.cancelled else ("**Done**" if n_ok else "**No result**")
    errs = "".join(f"<br>⚠️ {e}" for e in s.errors)
    kept = f"{n_ok}/{len(s.done)} candidates" if s.cancelled else f"{n_ok} candidate{'s' * (n_ok != 1)}"
    seeds = f"seed {s.seeds[0]}" if len(s.seeds) == 1 else f"seeds {s.seeds[0]}…{s.seeds[-1]}"
    return f"{head} — {kept} · {fp} · total **{s.elapsed_s:.2f} s** · {seeds}{reading_markdown(s)}{errs}"


def reasoning_text(s: Snapshot) -> str:
    parts = [f"[{i + 1}] {plain(t.strip())}" for i, t in enumerate(s.reasoning) if t.strip()]  # boxes as places
    return "\n".join(parts)


def idle_status(ctx: StudioContext) -> str:
    if ctx.default_model is None:
        return f"⚠️ {ctx.no_model_message}"
    return "Upload a photo, type an instruction and press **Enter**. Candidates appear here row by row."


def _engine_edit() -> EditFn:
    from engine.api import edit

    return edit


def _placeholder(ctx: StudioContext, size: tuple[int, int]) -> str:
    return ctx.previews.path(Image.new("RGB", size, (226, 228, 234)))


class EditTab:
    """Builds the tab's components where it is created (inside ``gr.Tabs``); ``wire`` connects them."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        # gr.State inside the tab: a State directly under gr.Tabs shifts the tabs' labels in the browser
        with gr.Tab("Edit", id="edit"), gr.Row(equal_height=False):
            self.state = gr.State(new_state())
            with gr.Column(scale=4, min_width=320, elem_id="controls"):
                self.side = SidePanel(ctx)
            with gr.Column(scale=7, min_width=420, elem_id="results"):
                self.status = gr.Markdown(idle_status(ctx), elem_id="status")
                self.reasoning = gr.Textbox(label="Reasoning", lines=3, max_lines=8, interactive=False,
                                            visible=False, elem_id="reasoning", autoscroll=True)
                self.panel = ResultsPanel(ctx, "edit")

    def wire(self, demo: gr.Blocks, rater_box: gr.Textbox, rng: random.Random) -> None:
        self._wire_run(rater_box, rng)
        self.side.wire_model_picker()
        self._wire_history(demo, rng)

    def _wire_run(self, rater_box: gr.Textbox, rng: random.Random) -> None:
        ctx, side, panel, status = self.ctx, self.side, self.panel, self.status
        store, registry = ctx.store, ctx.registry
        reasoning, run_btn, cancel_btn = self.reasoning, side.run_btn, side.cancel_btn
        edit_state, history = self.state, side.history

        def refuse(message: str, status_text: str) -> dict:
            gr.Warning(message)
            return {status: f"⚠️ {status_text}"}

        def run(photo_path, instr, n, think_, temp, tk, tp, seed_, rand, model_key, rater_typed, st,
                request: gr.Request) -> Iterator[dict]:
            st = dict(st)
            instr = (instr or "").strip()
            sid = request.session_hash or "local"
            if not photo_path:
                yield refuse("Upload a photo (or pick an example) first.",
                             "**Upload a photo first** — drop one on the left or pick an example.")
                return
            if not instr:
                yield refuse("Type what you want changed, e.g. “make it black and white”.",
                             "**Type an instruction** — what should change in the photo?")
                return
            if not model_key:
                yield refuse("No model is loaded.", ctx.no_model_message or "Pick a model under “Model”.")
                return
            try:
                bundle = registry.get(model_key)
            except ValueError as e:
                yield refuse(str(e), str(e))
                return
            try:
                src = source_image(ctx, photo_path, st, bundle)
            except ValueError as e:  # ImageInputError is a ValueError with a user-facing message
                rejected(str(e))
                yield refuse(str(e), str(e))
                return
            n = max(1, min(MAX_N, int(n or 1)))
            seed_ = rng.randrange(2**31 - n) if rand or seed_ is None else max(0, int(seed_))
            source = src.model_input
            req = EditRequest(
                source=source, instruction=instr, n=n, think=bool(think_), seed=seed_,
                temperature=float(temp), top_k=int(tk), top_p=float(tp), parent_id=src.parent,
                original=src.original, original_hash=src.original_hash,
            )
            cancel = threading.Event()
            ctx._cancels[sid] = cancel
            touch(photo_path)  # this page's photo: among the last of the temp files to go
            ctx.temp.prune(keep=[photo_path])
            edit_fn = ctx.edit_fn or _engine_edit()
            # the previous edit's results leave the screen and the state: nothing of them is rated by mistake
            st.update(cand_ids=[], selected=0, pair=[], view=0)
            yield {
                **panel.updates(st),
                status: f"Starting {n} candidate{'s' * (n > 1)} · seed {seed_}…",
                side.seed: seed_, run_btn: gr.update(interactive=False), cancel_btn: gr.update(interactive=True),
                reasoning: gr.update(value="", visible=bool(think_)), edit_state: st,
                panel.gallery: [(_placeholder(ctx, source.size), f"#{i + 1} · seed {seed_ + i}") for i in range(n)],
            }
            snap: Snapshot | None = None
            try:
                for snap in stream_edit(bundle, store, req, edit_fn=edit_fn, cancel=cancel,
                                        rater=ctx.rater(request, rater_typed)):
                    if not snap.finished:
                        yield {
                            status: progress_markdown(snap),
                            reasoning: reasoning_text(snap) if think_ else gr.skip(),
                            panel.gallery: [
                                (ctx.previews.path(im) if im is not None else _placeholder(ctx, source.size),
                                 f"#{i + 1} · seed {snap.seeds[i]}"
                                 + ("" if snap.done[i] else f" · row {snap.rows_done[i]}/{snap.rows_total[i]}"))
                                for i, im in enumerate(snap.images)
                            ],
                        }
            except Exception as e:  # an engine failure: say so in the UI, keep the app usable
                gr.Warning(f"The edit failed: {e}")
                yield {status: f"**The edit failed:** {e}", run_btn: gr.update(interactive=True),
                       cancel_btn: gr.update(interactive=False)}
                return
            finally:
                ctx._cancels.pop(sid, None)
            assert snap is not None
            ids = [c for c in snap.candidate_ids if c is not None]
            if ids:
                st.update(cand_ids=ids, selected=0, pair=pick_pair(ids, rng), parent=src.parent, view=0)
                st["edits"] = [*st["edits"], snap.edit_uid]
            out = {
                status: final_markdown(snap),
                reasoning: reasoning_text(snap) if think_ else gr.skip(),
                run_btn: gr.update(interactive=True), cancel_btn: gr.update(interactive=False),
                edit_state: st,
                history: gr.update(choices=tree_choices(store, st["edits"], st.get("parent")),
                                   value=f"edit:{snap.edit_uid}" if ids else None),
            }
            touch(photo_path)  # as recent as the results: the temp-file prune in panel.updates keeps both
            out.update(panel.updates(st))
            yield out

        run_inputs = [side.photo, side.instruction, *side.sampling_inputs, side.model, rater_box, edit_state]
        run_outputs = [status, reasoning, side.seed, run_btn, cancel_btn, edit_state, history, *panel.outputs]
        # One event for both triggers, ignored while it runs: Enter then a click on Edit ▶ would otherwise
        # run two edits (two events queue one after the other even with the button disabled by the first).
        gr.on([run_btn.click, side.instruction.submit], run, run_inputs, run_outputs, api_name="edit",
              concurrency_limit=1, concurrency_id="edit", show_progress="hidden", trigger_mode="once")

        def cancel_run(request: gr.Request) -> str:
            ev = ctx._cancels.get(request.session_hash or "local")
            if ev is None:
                return "Nothing is running."
            ev.set()
            return "Cancelling — keeping the candidates that already finished…"

        cancel_btn.click(cancel_run, None, status, queue=False, api_name="cancel")

    def go_to(self, node: str | None, st: dict, rng: random.Random) -> dict:
        """Make a history node the current one: a photo or a result becomes the source of the next edit;
        an edit shows its results and its source."""
        ctx, side, panel = self.ctx, self.side, self.panel
        store = ctx.store
        st = dict(st)
        if not node:
            return {self.state: st}
        kind, _, key = node.partition(":")
        if kind == "src":
            st.update(parent=None, photo=key)
            return {side.photo: shown(self.ctx, key), side.crumbs: breadcrumbs(store, None), self.state: st}
        if kind == "edit":
            cands = store.edit_candidates(key)
            if not cands:
                return {self.state: st, self.status: "That edit's results are no longer in the store."}
            first = cands[0]
            st.update(parent=first.parent_id, cand_ids=[c.id for c in cands], selected=0, photo=first.original_hash)
            status = (f"Results of “{first.instruction}” — continue from one, or type another instruction for "
                      "the same photo.")
            photo = shown(self.ctx, first.original_hash)
        else:
            cid = int(key)
            c = store.candidate(cid)
            siblings = [s.id for s in store.edit_candidates(c.edit_uid)]
            # the result at the photo's resolution: the box shows its preview, the edit starts from the file
            st.update(parent=cid, cand_ids=siblings, selected=siblings.index(cid), photo=c.full_hash)
            status = (f"↩ Source is now result #{c.idx + 1} of “{html.escape(c.instruction)}” — type the next "
                      "instruction.")
            photo = shown(self.ctx, c.full_hash)
        st["pair"] = pick_pair(st["cand_ids"], rng)
        shown_edit = store.candidates(st["cand_ids"])
        thought = [f"[{c.idx + 1}] {plain(c.reasoning.strip())}" for c in shown_edit if c.reasoning.strip()]
        out = {side.photo: str(photo), side.crumbs: breadcrumbs(store, st["parent"]), self.state: st,
               self.status: status, self.reasoning: gr.update(value="\n".join(thought), visible=bool(thought))}
        out.update(panel.updates(st))
        return out

    def _wire_history(self, demo: gr.Blocks, rng: random.Random) -> None:
        ctx, side, panel, edit_state = self.ctx, self.side, self.panel, self.state
        store, history = ctx.store, side.history
        moves = [side.photo, side.crumbs, edit_state, self.status, self.reasoning, *panel.outputs]

        history.input(lambda node, st: self.go_to(node, st, rng), [history, edit_state], moves,
                      api_name="history_go")

        def continue_from(st: dict) -> dict:
            ids = st.get("cand_ids") or []
            if not ids:
                return {self.status: "**Run an edit first** — then continue editing from one of its results."}
            cid = ids[min(st.get("selected", 0), len(ids) - 1)]
            out = self.go_to(f"cand:{cid}", st, rng)
            out[history] = gr.update(choices=tree_choices(store, st["edits"], cid), value=f"cand:{cid}")
            return out

        panel.continue_btn.click(continue_from, edit_state, [*moves, history], api_name="continue_from")

        def open_earlier(edit_uid: str | None, st: dict) -> dict:
            """An earlier edit joins this page's tree and opens, as if it had been made here."""
            if not edit_uid:
                return {edit_state: st}
            st = dict(st, edits=[e for e in st["edits"] if e != edit_uid] + [edit_uid])
            out = self.go_to(f"edit:{edit_uid}", st, rng)
            st = out.get(edit_state, st)
            out[history] = gr.update(choices=tree_choices(store, st["edits"], st.get("parent")),
                                     value=f"edit:{edit_uid}")
            return out

        side.earlier.input(open_earlier, [side.earlier, edit_state], [*moves, history], api_name="open_earlier")

        def new_upload(photo: str | None, st: dict) -> tuple:
            # ``photo`` is an input so that an unreadable file is reported as it arrives, not at the first edit
            ctx.temp.prune()  # uploads without edits count too; the new one is the newest file
            return dict(st, parent=None, photo=None), breadcrumbs(store, None)

        side.photo.upload(new_upload, [side.photo, edit_state], [edit_state, side.crumbs], api_visibility="private")
        if side.examples is not None:  # an example is a new photo too (the breadcrumb said the old lineage)
            side.examples.load_input_event.then(new_upload, [side.photo, edit_state], [edit_state, side.crumbs],
                                                api_visibility="private")

        def list_earlier(request: gr.Request) -> Any:
            # A new page (a reload, or the one a restarted server reloads) starts with an empty tree and
            # the newest edits (the signed-in user's with --auth) folded under "Earlier edits".
            user = getattr(request, "username", None) if request is not None else None
            return gr.update(choices=earlier_choices(store, EARLIER_EDITS, rater=str(user) if user else None),
                             value=None)

        demo.load(list_earlier, None, side.earlier, api_name="earlier_edits")
