"""The Edit tab's side panel: the photo, the instruction and the Edit button, sampling settings, the model
picker and the history (this page's tree, earlier edits folded away)."""

from __future__ import annotations

import gradio as gr

from studio.context import StudioContext
from studio.uploads import photo_input

MAX_N = 8  # most candidates per edit


def model_markdown(ctx: StudioContext, key: str | None) -> str:
    """What the model picker says about the bundle ``key`` (or why it cannot be used)."""
    if not key:
        return f"⚠️ {ctx.no_model_message or 'No model selected.'}"
    try:
        return ctx.registry.describe(ctx.registry.get(key))
    except ValueError as e:
        return f"⚠️ {e}"


def sampling_for(ctx: StudioContext, key: str | None) -> dict[str, float]:
    """The sampling settings a bundle starts with (its bundle.json "sampling", else EARL's defaults)."""
    from engine.bundle import SAMPLING_DEFAULTS, sampling_defaults

    if key:
        try:
            return sampling_defaults(ctx.registry.get(key).config)
        except ValueError:
            pass  # the model info box shows the error
    return dict(SAMPLING_DEFAULTS)


class SidePanel:
    """Builds the side panel's components where it is created, and wires the model picker."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        examples = ctx.examples()
        self.photo = photo_input(
            label="Photo", type="filepath", format="png", image_mode=None,
            sources=["upload", "clipboard"], height=280, elem_id="photo",
        )
        self.examples = None
        if examples:
            self.examples = gr.Examples(examples=[[p] for p in examples], inputs=[self.photo],
                                        label="Example photos", examples_per_page=12)
        else:
            gr.Markdown("<span class='muted'>No example photos shipped yet — upload your own.</span>")
        self.crumbs = gr.Markdown("original photo", elem_id="crumbs")
        self.instruction = gr.Textbox(
            label="Instruction", placeholder="e.g. make it black and white — press Enter to run",
            lines=1, max_lines=3, elem_id="instruction", autofocus=True,
        )
        with gr.Row():
            self.run_btn = gr.Button("Edit ▶", variant="primary", elem_id="run", scale=3)
            self.cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1, interactive=False)
        start = sampling_for(ctx, ctx.default_model)
        with gr.Accordion("Sampling", open=True, elem_id="sampling"):
            with gr.Row():
                self.n = gr.Slider(1, MAX_N, value=4, step=1, label="Candidates (N)", elem_id="n")
                self.think = gr.Checkbox(label="Think first", value=False, elem_id="think",
                                         info="write reasoning before the image")
            with gr.Row():
                self.temperature = gr.Slider(0.05, 2.0, value=start["temperature"], step=0.05, label="Temperature",
                                             elem_id="temperature")
                self.top_p = gr.Slider(0.05, 1.0, value=start["top_p"], step=0.01, label="Top-p")
            self.top_k = gr.Slider(1, 4096, value=start["top_k"], step=1, label="Top-k")
            with gr.Row(equal_height=True):
                self.seed = gr.Number(value=0, precision=0, label="Seed (candidate i uses seed + i)",
                                      elem_id="seed", minimum=0, maximum=2**31 - 1)
                self.randomize = gr.Checkbox(value=True, label="New random seed each run", elem_id="randomize")
        with gr.Accordion("Model", open=False, elem_id="model"):
            with gr.Row(equal_height=True):
                self.model = gr.Dropdown(
                    choices=self.ctx.registry.dropdown_choices(), value=ctx.default_model, label="Bundle",
                    elem_id="model-picker", allow_custom_value=False, scale=5,
                )
                self.rescan_btn = gr.Button("↻", scale=0, min_width=44, elem_id="rescan", size="sm")
            with gr.Row(equal_height=True):
                self.path_box = gr.Textbox(label="…or a bundle folder on this machine",
                                           placeholder="/path/to/bundle (holds bundle.json)", scale=3)
                self.load_btn = gr.Button("Use it", scale=1)
            self.model_info = gr.Markdown(model_markdown(ctx, ctx.default_model) + ctx.registry.skipped_message())
        with gr.Accordion("History", open=True, elem_id="history-box"):
            self.history = gr.Radio(
                choices=[], value=None, label="This page's edits — click one to go back to it",
                elem_id="history", elem_classes=["history-tree"],
            )
            with gr.Accordion("Earlier edits", open=False, elem_id="earlier-box"):
                self.earlier = gr.Radio(choices=[], value=None, label="Click one to open it here",
                                        elem_id="earlier", elem_classes=["history-tree"])

    @property
    def sampling_inputs(self) -> list:
        return [self.n, self.think, self.temperature, self.top_k, self.top_p, self.seed, self.randomize]

    def wire_model_picker(self) -> None:
        """Picking a bundle shows it and loads its sampling settings; a folder path adds one; ↻ rescans."""
        ctx, registry = self.ctx, self.ctx.registry

        def pick_model(key: str | None) -> tuple:
            # each bundle starts from the sampling settings measured for it (bundle.json "sampling")
            s = sampling_for(ctx, key)
            return model_markdown(ctx, key), s["temperature"], s["top_k"], s["top_p"]

        self.model.change(pick_model, self.model, [self.model_info, self.temperature, self.top_k, self.top_p],
                          api_visibility="private")

        def use_path(path: str) -> tuple:
            try:
                key = registry.add_path(path)
                bundle = registry.get(key)
            except ValueError as e:
                gr.Warning(str(e))
                return gr.skip(), f"⚠️ {e}"
            return gr.update(choices=registry.dropdown_choices(), value=key), registry.describe(bundle)

        self.load_btn.click(use_path, self.path_box, [self.model, self.model_info], api_visibility="private")

        def rescan(current: str | None) -> tuple:
            """Pick up bundles added to <data>/bundles/ since start (e.g. by a fine-tuning job)."""
            return (gr.update(choices=registry.dropdown_choices(), value=current),
                    model_markdown(ctx, current) + registry.skipped_message())

        self.rescan_btn.click(rescan, self.model, [self.model, self.model_info], api_name="rescan_models")
