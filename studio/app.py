"""EARL Studio: the Gradio page (top bar with the rater's name, then the Edit, Review & rate and Fine-tune
tabs) and how it is served.

``build_app(ctx)`` returns the Blocks; ``launch_kwargs(ctx)`` the matching ``launch()`` arguments
(theme, CSS, keyboard-shortcut JS, allowed paths); ``serve`` starts it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import gradio as gr

from studio.context import StudioContext, default_rater
from studio.edit_tab import EditTab
from studio.finetune_tab import build_finetune_tab
from studio.review_tab import ReviewTab
from studio.tempfiles import serve_in_place
from studio.ui_assets import CSS, HEAD, SHORTCUTS_HELP, SHORTCUTS_JS

__all__ = ["StudioContext", "build_app", "launch_kwargs", "serve"]

def build_app(ctx: StudioContext) -> gr.Blocks:
    """The whole page for ``ctx``; its events are the studio's API (``/edit``, ``/thumb_up`` …)."""
    rng = random.Random()
    # The page's images and downloads are served from the studio's folders, not copied into Gradio's
    # cache; the cache then holds the uploads, which ctx.temp prunes by size with the studio's own temp
    # files. delete_cache adds Gradio's own bound by age (files untouched for an hour).
    serve_in_place(served_folders(ctx))
    with gr.Blocks(title="EARL Studio", delete_cache=(1800, 3600)) as demo:
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
        with gr.Tabs():
            edit = EditTab(ctx)
            review = ReviewTab(ctx)
            build_finetune_tab(ctx, model_picker=edit.side.model)
        gr.Markdown(SHORTCUTS_HELP, elem_id="shortcuts")

        edit.wire(demo, rater_box, rng)
        review.wire(rng)
        for tab, api_prefix in ((edit, ""), (review, "review_")):
            tab.panel.wire(tab.state, rater_box, [review.counts], rng, api_prefix)
        # the page as built lists the bundles there were at start: each page load lists them anew, so a
        # bundle trained and registered since (or copied into <data>/bundles/) is there after a reload
        demo.load(lambda: gr.update(choices=ctx.registry.dropdown_choices()), None, edit.side.model,
                  api_name="model_choices")
    ctx.temp.track(demo)
    return demo


def served_folders(ctx: StudioContext) -> list[Path]:
    """The studio's folders whose files the page shows: the stored images, the download files, previews."""
    return [ctx.store.images_dir, ctx.exports_dir, ctx.previews.folder]


def launch_kwargs(ctx: StudioContext) -> dict[str, Any]:
    """Arguments for ``demo.launch``: look, shortcuts, and which folders may be served."""
    allowed = [str(f) for f in served_folders(ctx)]
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


def serve(demo: gr.Blocks, ctx: StudioContext, *, host: str, port: int, share: bool = False,
          auth: tuple[str, str] | None = None, block: bool = True) -> str:
    """Start the page on ``host:port`` and say where it is; returns its local URL.

    Gradio's own start-up lines are silenced: its hint to set ``share=True`` in ``launch()`` is for
    programmers, and the studio's users share with ``--share``. ``block=False`` returns while it runs
    (``demo.close()`` stops it)."""
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host, server_port=port, share=share, auth=auth, quiet=True, prevent_thread_lock=True,
        auth_message="EARL Studio — sign in; your ratings are stored under your username." if auth else None,
        show_error=True, **launch_kwargs(ctx),
    )
    print(f"EARL Studio is running on {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"Public link (temporary): {demo.share_url}", flush=True)
    elif share:
        print("No public link could be made (it needs internet access).", flush=True)
    else:
        print("To open it from other machines too, start it with --share (a temporary public link).", flush=True)
    if block:
        demo.block_thread()
    return str(demo.local_url)
