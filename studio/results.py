"""The results panel, one per tab (Edit, Review): the candidates' gallery, the selected candidate compared
with its source (before/after slider, difference heatmap), its download, and the rating buttons.

A candidate is shown through its views (``candidate_views``): each is a labelled (before, after) pair of
stored image files, the first one the edit at the photo's own resolution, then the model's own output;
the compare widgets and the download show the view picked under them (the first by default). The page
gets screen-sized previews of large images (``studio.imaging.SCREEN_SIDE``); the download, the full file."""

from __future__ import annotations

import html
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from feedback.store import CHECK_COMMAND, Candidate, StoreError
from studio.context import StudioContext
from studio.imaging import TURN_WORDS, diff_heatmap, turned_to_match
from studio.ratings import counts_markdown, pick_pair, save_rating, standing_label
from studio.tempfiles import touch


@dataclass
class CandidateView:
    """One way to look at a candidate: the image it was made from and the image it became."""

    label: str
    before: Path
    after: Path
    before_hash: str = ""
    after_hash: str = ""
    suffix: str = ""  # added to the download's file name


def lost_image() -> Image.Image:
    """What the page shows in place of a stored image that is missing or damaged."""
    im = Image.new("RGB", (256, 256), (236, 226, 226))
    d = ImageDraw.Draw(im)
    d.line([(0, 0), (255, 255)], fill=(190, 150, 150), width=3)
    d.line([(0, 255), (255, 0)], fill=(190, 150, 150), width=3)
    d.rectangle([(40, 108), (216, 148)], fill=(255, 255, 255))
    d.text((128, 128), "image missing", fill=(140, 40, 40), anchor="mm")
    return im


def shown(ctx: StudioContext, image_hash: str) -> str:
    """The stored image as the page shows it: the file itself up to ``SCREEN_SIDE`` px a side, a
    downscaled copy beyond (made once); a placeholder when the file is missing or damaged."""
    path = stored(ctx, image_hash)
    if Path(path) != ctx.store.image_path(image_hash):
        return path  # the placeholder
    return ctx.previews.screen_size(Path(path), image_hash)


def stored(ctx: StudioContext, image_hash: str) -> str:
    """The stored image's file, or a placeholder's when the file is missing or damaged: one lost file
    must not take the page (gallery, compare, A/B) down with it."""
    if ctx.store.image_problem(image_hash) is None:
        return str(ctx.store.image_path(image_hash))
    return ctx.previews.path(lost_image())


def lost_note(ctx: StudioContext, hashes: list[str]) -> str:
    """A line for the page when some of these stored images are missing or damaged ("" when none)."""
    lost = [h for h in hashes if ctx.store.image_problem(h) is not None]
    if not lost:
        return ""
    what = "1 stored image of this candidate is" if len(lost) == 1 else f"{len(lost)} stored images of this candidate are"
    return (f"<br>Warning: {what} missing or damaged in {ctx.store.images_dir} (shown as a placeholder). "
            f"`{CHECK_COMMAND} --data {ctx.data_dir}` lists every such file.")


def _size(ctx: StudioContext, image_hash: str) -> str:
    try:
        with Image.open(ctx.store.image_path(image_hash)) as im:
            return f"{im.width}×{im.height}"
    except (OSError, SyntaxError, ValueError):
        return "?"


def candidate_views(ctx: StudioContext, c: Candidate) -> list[CandidateView]:
    """The views of a candidate: the edit at the photo's resolution (from the photo at its own size),
    then the model's own output (from the picture the model saw). One view when both are the same images
    (a photo no larger than the model's picture, or a row stored before full-resolution results)."""
    model = CandidateView(f"model output {_size(ctx, c.output_hash)}", Path(stored(ctx, c.source_hash)),
                          Path(stored(ctx, c.output_hash)), c.source_hash, c.output_hash, "-model")
    if (c.full_hash, c.original_hash) == (c.output_hash, c.source_hash):
        return [model]
    full = CandidateView(f"full resolution {_size(ctx, c.full_hash)}", Path(stored(ctx, c.original_hash)),
                         Path(stored(ctx, c.full_hash)), c.original_hash, c.full_hash)
    return [full, model]


def link_or_copy(src: Path, dst: Path) -> None:
    """The download's file under a readable name: a hard link (no second copy of a stored image on disk),
    a copy where the file system has no links."""
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:
        shutil.copyfile(src, dst)


def caption(c: Candidate) -> str:
    return f"#{c.idx + 1} · seed {c.seed}"


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def new_state() -> dict[str, Any]:
    """A panel's session state. cand_ids: the candidates shown (gallery order); selected: index into
    it; pair: [left, right] ids shown as A/B; parent: candidate whose result is the current source;
    edits: the edits of this page; view: index into the selected candidate's views (``candidate_views``);
    photo: hash of the stored image whose preview the photo box shows (the edit then starts from the
    stored image at its full size)."""
    return {"cand_ids": [], "selected": 0, "pair": [], "parent": None, "edits": [], "source_hash": None, "view": 0,
            "photo": None}


def render_note(render: dict[str, Any]) -> str:
    """A line under a candidate when its full-size result is not the photo edited: the model's picture
    matched nothing in the photo, so what is shown is that picture, upscaled (blurry, by nature)."""
    if render.get("method") != "upsampled":
        return ""
    return ("<br><span class='muted'>full size: the model's own picture, upscaled. It did not match your photo "
            f"({html.escape(str(render.get('reason', '')))}), so none of the photo's pixels were kept.</span>")


def next_pair_state(st: dict, rng: random.Random) -> dict:
    """``st`` moved on to an A/B pair of its candidates not shown yet (all of them in turn, then any other
    than the one on screen). ``st["pairs_seen"]`` remembers the pairs shown of these candidates only."""
    ids = st.get("cand_ids") or []
    seen = st.get("pairs_seen") or {}
    shown = seen.get("pairs", []) if seen.get("ids") == ids else []
    if st.get("pair"):
        shown = [*shown, sorted(st["pair"])]
    pair = pick_pair(ids, rng, avoid=st.get("pair"), seen=shown)
    if len({tuple(p) for p in shown}) >= len(ids) * (len(ids) - 1) // 2:  # every pair shown: round again
        shown = []
    return dict(st, pair=pair, pairs_seen={"ids": list(ids), "pairs": shown})


class ResultsPanel:
    """Builds the panel's components where it is created (inside a tab); ``prefix`` names their ids."""

    def __init__(self, ctx: StudioContext, prefix: str) -> None:
        self.ctx, self.prefix = ctx, prefix
        self.gallery = gr.Gallery(
            label="Candidates — click one to compare and rate it", columns=4, height=None, format="png",
            object_fit="contain", allow_preview=False, elem_id=f"{prefix}-gallery", elem_classes=["cands"],
            buttons=["download"], interactive=False,
        )
        with gr.Row(equal_height=True):
            self.slider = gr.ImageSlider(label="Before / after", format="png", type="pil",
                                         elem_id=f"{prefix}-slider", max_height=360, buttons=["fullscreen"],
                                         interactive=False)
            self.heatmap = gr.Image(label="What changed (difference)", format="png", type="pil", interactive=False,
                                    elem_id=f"{prefix}-heatmap", height=360, buttons=["fullscreen"])
        with gr.Row(equal_height=True, elem_classes=["cand-bar"]):
            self.info = gr.Markdown("", elem_classes=["cand-info"])
            self.download = gr.DownloadButton("Download PNG", value=None, size="sm", scale=0, min_width=130,
                                              elem_id=f"{prefix}-download", interactive=False)
            self.view = gr.Radio(choices=[], value=None, show_label=False, container=False, visible=False,
                                 elem_id=f"{prefix}-view", scale=0, min_width=260)
            self.continue_btn = gr.Button("Continue editing from this ↪", size="sm", scale=0, min_width=200,
                                          visible=prefix == "edit", elem_id=f"{prefix}-continue")
        with gr.Group(elem_classes=["rate-box"]):
            with gr.Row(equal_height=True, elem_classes=["rate-row"]):
                gr.HTML("<span class='rate-label'>This one</span>", padding=False)
                self.up = gr.Button("Thumbs up", size="sm", elem_classes=["kb-up", "rate-btn"], min_width=90,
                                    scale=0)
                self.down = gr.Button("Thumbs down", size="sm", elem_classes=["kb-down", "rate-btn"],
                                      min_width=100, scale=0)
                self.stars = [
                    gr.Button("★" * s, size="sm", elem_classes=[f"kb-star-{s}", "rate-btn", "star-btn"],
                              min_width=34 + 8 * s, scale=0)
                    for s in range(1, 6)
                ]
                self.best = gr.Button("Best of all", size="sm", elem_classes=["kb-best", "rate-btn"], scale=0,
                                      min_width=110)
        with gr.Group(elem_classes=["pair-box"]):
            with gr.Row(equal_height=True):
                self.pair_a = gr.Image(label="A", format="png", type="pil", interactive=False, height=220,
                                       elem_id=f"{prefix}-pair-a", buttons=[])
                self.pair_b = gr.Image(label="B", format="png", type="pil", interactive=False, height=220,
                                       elem_id=f"{prefix}-pair-b", buttons=[])
            with gr.Row(equal_height=True, elem_classes=["rate-row"]):
                self.pa = gr.Button("A is better", size="sm", elem_classes=["kb-a", "rate-btn"])
                self.pb = gr.Button("B is better", size="sm", elem_classes=["kb-b", "rate-btn"])
                self.tie = gr.Button("Tie", size="sm", elem_classes=["kb-tie", "rate-btn"])
                self.both_bad = gr.Button("Both bad", size="sm", elem_classes=["kb-bad", "rate-btn"])
                self.next_pair = gr.Button("Another pair ⟳", size="sm", elem_classes=["kb-next"])
        self.msg = gr.Markdown("", elem_classes=["rate-msg"])
        # for API clients, who cannot click the gallery: the candidate to select, numbered #1, #2 … as shown
        self.pick = gr.Number(value=1, precision=0, visible=False, elem_id=f"{prefix}-pick")
        # the components a selection changes
        self.selected = [self.slider, self.heatmap, self.info, self.download, self.view]
        self.outputs = [self.gallery, self.slider, self.heatmap, self.info, self.download, self.pair_a,
                        self.pair_b, self.msg, self.view]

    # -- values for a state
    def updates(self, st: dict) -> dict:
        """Every component's value for state ``st`` (after a run, on select, on opening an edit)."""
        store = self.ctx.store
        ids = st.get("cand_ids") or []
        if not ids:
            return {self.gallery: [], self.slider: None, self.heatmap: None, self.info: "",
                    self.download: gr.update(value=None, interactive=False),
                    self.pair_a: gr.update(value=None, label="A"), self.pair_b: gr.update(value=None, label="B"),
                    self.msg: "", self.view: gr.update(choices=[], value=None, visible=False)}
        cands = store.candidates(ids)
        out = {self.gallery: gr.update(value=[(shown(self.ctx, c.full_hash), caption(c)) for c in cands],
                                       selected_index=st.get("selected", 0))}
        out.update(self.selected_updates(st, cands))
        out.update(self.pair_updates(st))
        out[self.msg] = ""
        return out

    def selected_updates(self, st: dict, cands: list[Candidate] | None = None) -> dict:
        store = self.ctx.store
        ids = st["cand_ids"]
        i = min(max(0, int(st.get("selected", 0))), len(ids) - 1)
        c = cands[i] if cands is not None else store.candidate(ids[i])
        views = candidate_views(self.ctx, c)
        v = min(max(0, int(st.get("view") or 0)), len(views) - 1)
        view = views[v]
        picker = gr.update(choices=[(w.label, k) for k, w in enumerate(views)], value=v, visible=len(views) > 1)
        lost = lost_note(self.ctx, [view.before_hash, view.after_hash])
        before, after = shown(self.ctx, view.before_hash), shown(self.ctx, view.after_hash)
        turn = None
        if lost:
            heat, mean_diff = lost_image(), 0.0
        else:  # on the screen-sized previews: the same picture of the change, without a full-size pass
            with Image.open(before) as b, Image.open(after) as a:
                # a result turned on its side is compared with its source turned the same way
                b_cmp, turn = turned_to_match(b, a)
                heat, mean_diff = diff_heatmap(b_cmp, a)
                if turn is not None:
                    before = self.ctx.previews.path(b_cmp)
        t = c.timings
        timing = f" · {t['total']:.2f} s" if "total" in t else ""
        # what stands, as training counts it: later A/B clicks do not push a star rating out of view
        mine = ", ".join(standing_label(r, c.id) for r in store.standing_ratings(candidate_id=c.id))
        info = (
            f"**#{c.idx + 1}** of {len(ids)} · seed `{c.seed}` · log-prob {c.logprob_sum:.1f} over "
            f"{len(c.tokens)} tokens{timing}" + ("" if lost else f" · mean change {mean_diff * 100:.1f}%")
            + (f" · compared with the source {TURN_WORDS.get(turn, turn)}" if turn is not None else "")
            + lost
            + render_note(c.render)
            + (f"<br><span class='muted'>rated: {mine}</span>" if mine else "")
            + (f"<br><span class='muted'>reasoning: {html.escape(_clip(c.reasoning, 300))}</span>"
               if c.reasoning.strip() else "")
        )
        slider, heat_path = (before, after), self.ctx.previews.path(heat)
        if lost:
            return {self.slider: slider, self.heatmap: heat_path, self.info: info, self.view: picker,
                    self.download: gr.update(value=None, interactive=False)}
        # the download is the view's full file, under a readable name
        export = self.ctx.exports_dir / f"earl-edit-{c.id}-seed{c.seed}{view.suffix}.png"
        if export.exists():
            touch(export)  # shown again: among the last of the temp files to go
        else:  # made again when the temp-file prune dropped it
            link_or_copy(view.after, export)
        self.ctx.temp.prune()  # browsing and rating make previews and downloads too; these are the newest
        return {self.slider: slider, self.heatmap: heat_path, self.info: info, self.view: picker,
                self.download: gr.update(value=str(export), interactive=True, label=f"Download PNG {view.label.split()[-1]}")}

    def pair_updates(self, st: dict) -> dict:
        pair = st.get("pair") or []
        if len(pair) != 2:
            return {self.pair_a: gr.update(value=None, label="A"), self.pair_b: gr.update(value=None, label="B")}
        store = self.ctx.store
        a, b = store.candidates(pair)
        return {
            self.pair_a: gr.update(value=shown(self.ctx, a.full_hash), label=f"A (#{a.idx + 1})"),
            self.pair_b: gr.update(value=shown(self.ctx, b.full_hash), label=f"B (#{b.idx + 1})"),
        }

    # -- events
    def wire(self, pstate: gr.State, rater_box: gr.Textbox, counts_out: list, rng: random.Random,
             api_prefix: str) -> None:
        """Gallery selection, the rating buttons (API names ``<api_prefix>thumb_up`` …) and another pair."""
        ctx, store = self.ctx, self.ctx.store

        def select(st: dict, evt: gr.SelectData) -> dict:
            st = dict(st)
            if not st.get("cand_ids"):
                return {pstate: st}
            st["selected"] = int(evt.index)
            return {pstate: st, **self.selected_updates(st)}

        self.gallery.select(select, pstate, [pstate, *self.selected], api_visibility="private")

        def select_number(st: dict, k: float | None) -> dict:
            """Select candidate #k (as the gallery numbers them), as a click on it would."""
            ids = st.get("cand_ids") or []
            if not ids:
                return {pstate: st}
            if k is None or not 1 <= int(k) <= len(ids):
                raise gr.Error(f"There are candidates #1 to #{len(ids)}; got #{k}.")
            st = dict(st, selected=int(k) - 1)
            return {pstate: st, **self.selected_updates(st)}

        self.pick.input(select_number, [pstate, self.pick], [pstate, *self.selected],
                        api_name=f"{api_prefix}select_candidate")

        def pick_view(st: dict, v: int | None) -> dict:
            """The full-resolution result or the model's own output, in the compare widgets and the download."""
            st = dict(st, view=int(v or 0))
            if not st.get("cand_ids"):
                return {pstate: st}
            return {pstate: st, **self.selected_updates(st)}

        self.view.input(pick_view, [pstate, self.view], [pstate, *self.selected], api_name=f"{api_prefix}view")

        def rate(kind: str, value: Any) -> Callable:
            def handler(st: dict, typed: str, request: gr.Request) -> dict:
                ids = st.get("cand_ids") or []
                if not ids:
                    gr.Warning("Nothing to rate yet — run an edit first.")
                    return {self.msg: "⚠️ Nothing to rate yet."}
                sel = ids[min(int(st.get("selected", 0)), len(ids) - 1)]
                rater = ctx.rater(request, typed)
                try:
                    rid, what = save_rating(store, rater, kind, value, ids, sel, st.get("pair") or [])
                except StoreError as e:
                    gr.Warning(str(e))
                    return {self.msg: f"⚠️ {e}"}
                except ValueError as e:  # the click needs more candidates than are shown
                    return {self.msg: f"⚠️ {e}"}
                out = {self.msg: f"✓ Saved {what} · rating {rid} by <b>{html.escape(rater)}</b>"}
                for c in counts_out:
                    out[c] = counts_markdown(store.counts())
                if kind == "pair":  # move on to a fresh pair so the rater can keep going with the keys
                    st = next_pair_state(st, rng)
                    out[pstate] = st
                    out.update(self.pair_updates(st))
                else:
                    out.update(self.selected_updates(st))
                return out

            return handler

        outs = [self.msg, pstate, self.pair_a, self.pair_b, *self.selected, *counts_out]
        common = dict(inputs=[pstate, rater_box], outputs=outs)
        self.up.click(rate("thumb", "up"), api_name=f"{api_prefix}thumb_up", **common)
        self.down.click(rate("thumb", "down"), api_name=f"{api_prefix}thumb_down", **common)
        for s, btn in enumerate(self.stars, 1):
            btn.click(rate("star", s), api_name=f"{api_prefix}star_{s}", **common)
        self.best.click(rate("best_of_n", None), api_name=f"{api_prefix}best_of_n", **common)
        self.pa.click(rate("pair", "A"), api_name=f"{api_prefix}pair_a", **common)
        self.pb.click(rate("pair", "B"), api_name=f"{api_prefix}pair_b", **common)
        self.tie.click(rate("pair", "tie"), api_name=f"{api_prefix}pair_tie", **common)
        self.both_bad.click(rate("pair", "both_bad"), api_name=f"{api_prefix}pair_both_bad", **common)

        def next_pair(st: dict) -> dict:
            st = next_pair_state(st, rng)
            return {pstate: st, **self.pair_updates(st)}

        self.next_pair.click(next_pair, pstate, [pstate, self.pair_a, self.pair_b], api_visibility="private")
