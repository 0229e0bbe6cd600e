"""The studio's "Fine-tune" tab: train a new bundle from the collected ratings (DPO / KTO) or with a reward
(GRPO), watch it, cancel it, use the result — then compare old and new blind.

Built by ``studio.app`` (``build_finetune_tab(ctx)``). Training runs as a separate
process (``training.jobs``); this module only starts it and reads its progress file. The handlers are
plain functions of the context (``start_job``, ``poll``, ``ab_next``, ``ab_rate``, ``ab_win_rates``) so
they are testable without a browser.

Blind A/B: a held-out suite photo + instruction is edited by both bundles (same seed, one candidate
each), shown left/right in random order without names; the rating is stored as an A/B pair with
``settings["ab_test"] = True`` and the shown order, and the win rate per bundle is computed from the store.
Those held-out edits are not the user's: the lists of earlier edits and the rating totals leave them out
(``Store.recent_edits``, ``studio.ratings.collected``), and they are rated here only.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.ratings import ab_verdict, counts_markdown, readiness, training_pairs, wilson_interval
from training.jobs import JobManager

METHODS = {
    "DPO — from A/B pairs, best-of-N, stars and thumbs": "dpo",
    "KTO — from thumbs up / down": "kto",
    "GRPO — online RL with a reward": "grpo",
    "Reward model — learn a scorer from your ratings (a GRPO reward)": "reward_model",
}
REWARDS = {"Programmatic verifier (suite photos)": "verifier", "MLLM judge (OpenAI-compatible endpoint)": "judge",
           "Reward model learned from ratings": "reward_model"}
DPO_MAX_STEPS = 100
NOTE_FILE = "studio-note.md"  # in a job's folder: the warning its start gave, shown with its status
_managers: dict[str, JobManager] = {}
_heldout: list[dict] = []


def manager(ctx: Any) -> JobManager:
    key = str(ctx.data_dir)
    if key not in _managers:
        _managers[key] = JobManager(ctx.data_dir)
    return _managers[key]


def _bundle_folder(ctx: Any, key: str | None) -> str:
    if not key:
        raise ValueError("Pick the bundle to start from.")
    if not key.startswith("path:"):
        raise ValueError("This model lives only in memory (demo); fine-tuning needs a bundle folder.")
    return key[5:]


def measured_settings(method: str, bundle: str, lora: bool) -> dict[str, Any]:
    """Settings measured to help on EARL-nano (docs/rl.md, "Measured on EARL-nano"), on top of the trainers'
    defaults: those are sized for large models, where smaller learning rates are right."""
    from engine.bundle import read_bundle_config

    family = read_bundle_config(bundle).family
    out: dict[str, Any] = {}
    if method == "dpo":
        # the NLL term on the chosen candidate (RPO) on the scale of the DPO term: at weight 1 the DPO
        # term dominated and a run from 100 ratings lowered the kinds not rated (research/feedback-loop.md,
        # runs B and D)
        out["sft_weight"] = 20.0
        if family == "earl-nano" and not lora:
            out["lr"] = 2e-5
            # many candidates per edit rated with stars or thumbs give hundreds of pairs: capped so a
            # one-click run stays within about half an hour on a 2-core CPU
            out["max_steps"] = DPO_MAX_STEPS
    if method == "kto" and family == "earl-nano" and not lora:
        # as DPO: the trainer's default is sized for large models (research/feedback-loop.md, run G)
        out["lr"] = 2e-5
    if method == "grpo" and family == "earl-nano" and not lora:
        out["lr"] = 5e-5
    return out


def start_job(ctx: Any, method_label: str, base_key: str | None, name: str, epochs: float, steps: float,
              reward_label: str, judge_url: str, lora: bool) -> tuple[str, str]:
    """Start a job; returns (status markdown, job id). Raises ValueError with a readable message."""
    method = METHODS.get(method_label)
    if method is None:
        raise ValueError("Pick a method.")
    bundle = _bundle_folder(ctx, base_key)
    opts: dict[str, Any] = {"lora": bool(lora)}
    if method == "grpo":
        reward = REWARDS.get(reward_label, "verifier")
        opts.update(steps=int(steps), reward=reward)
        if reward == "judge":
            if not (judge_url or "").strip():
                raise ValueError("The judge reward needs the endpoint URL (e.g. http://localhost:8000/v1).")
            opts["judge_url"] = judge_url.strip()
        if reward == "reward_model":
            rms = sorted((Path(ctx.data_dir) / "reward_models").glob("*/reward_model.json"))
            if not rms:
                raise ValueError("No reward model yet: train one from your ratings first (Method ▸ "
                                 "“Reward model” in this tab, or python -m training.reward_model).")
            opts["reward_model"] = str(rms[-1].parent)
    elif method == "reward_model":
        if training_pairs(ctx.store.counts()) < 2:
            raise ValueError("A reward model needs at least a few preference pairs (A/B, best-of-N, or stars "
                             "or thumbs that tell two candidates of one edit apart).")
    else:
        data = ctx.store.counts()
        thumbs_both = data.get("thumbs_up", 0) > 0 and data.get("thumbs_down", 0) > 0
        if method == "dpo" and training_pairs(data) == 0:
            raise ValueError("No preference pairs yet: rate some A/B pairs or best-of-N, or give two candidates "
                             "of one edit different stars or thumbs, first.")
        if method == "kto" and not thumbs_both:
            raise ValueError("KTO needs thumbs of both kinds (some up and some down).")
        opts["epochs"] = int(epochs)
    opts.update(measured_settings(method, bundle, bool(lora)))
    clean = "".join(c for c in (name or "").strip() if c.isalnum() or c in "-_.") or None
    # the machine's cores (up to 8): the studio sits idle while its person waits for the job
    job = manager(ctx).start(method, bundle, name=clean, threads=min(os.cpu_count() or 1, 8), **opts)
    msg = f"Started **{method.upper()}** job `{job.id}` → bundle **{job.name}**"
    note = low_data_note(method, ctx.store.counts())
    if note:
        msg += "\n\n" + note
        try:  # kept with the job: the status line that replaces this message while it runs shows it too
            (job.dir / NOTE_FILE).write_text(note)
        except OSError:  # (a full disk: the job says so itself) the message above still shows it once
            pass
    return msg, job.id


def low_data_note(method: str, counts: dict[str, int]) -> str:
    """The warning that a run starts on fewer ratings than a first useful one wants ("" when it has
    enough): allowed (a first try, a demo), but so little data will barely move the model."""
    ready = readiness(counts).get(method)
    if ready is None or ready["ready"]:
        return ""
    return (f"⚠️ Only {ready['have']} of the {ready['need']} ratings a first useful {method.upper()} run "
            f"wants ({ready['more']} more): expect the new model to differ little from the old one.")


def job_note(job: Any) -> str:
    """What the studio said about a job when it started it (the low-data warning), "" if nothing."""
    try:
        return (job.dir / NOTE_FILE).read_text()
    except OSError:
        return ""


def poll(ctx: Any, job_id: str | None) -> tuple[str, pd.DataFrame, str]:
    """(status markdown, curve data, log tail) of a job."""
    empty = pd.DataFrame({"step": [], "value": [], "metric": []})
    if not job_id:
        return "No job running. Pick a method and press **Start**.", empty, ""
    job = manager(ctx).get(job_id)
    st = job.status()
    rows = [{"step": h["step"], "value": h[m], "metric": m} for h in st.get("history", [])
            for m in ("loss", "reward") if h.get(m) is not None]
    df = pd.DataFrame(rows) if rows else empty
    step, steps = st.get("step") or 0, st.get("steps") or "?"
    eta = st.get("eta_s")
    parts = [f"**{st['method'].upper()}** `{job.id}` — **{st['state']}** · step {step}/{steps}"]
    if st.get("loss") is not None:
        parts.append(f"loss {st['loss']:.4f}")
    if st.get("reward") is not None:
        parts.append(f"reward {st['reward']:.3f}")
    if eta and st["state"] == "running":
        parts.append(f"about {int(eta // 60)} min {int(eta % 60)} s left")
    md = " · ".join(parts)
    if st["state"] == "done" and st.get("reward_model"):
        md += f"\n\n**Reward model:** `{st['reward_model']}` — GRPO with the reward-model reward now uses it."
    elif st["state"] == "done":
        md += f"\n\n**New bundle:** `{st.get('bundle')}` — press **Use the new model** to register it."
    elif st["state"] in ("failed",) and st.get("message"):
        md += f"\n\n**Failed:** {st['message'][:2000]}"
    note = job_note(job)
    return md + (f"\n\n{note}" if note else ""), df, job.log_tail(12)


def current_job(ctx: Any, job_id: str | None) -> str | None:
    """The job a page shows: its own, else the newest job of the data folder, so a reloaded page (or a
    second browser, or the page after a server restart) still sees a running job and can watch, cancel
    or register it."""
    if job_id:
        return job_id
    jobs = manager(ctx).list()
    return jobs[0].id if jobs else None


def cancel(ctx: Any, job_id: str | None) -> str:
    if not job_id:
        return "No job to cancel."
    return "Cancelled." if manager(ctx).get(job_id).cancel() else "The job had already ended."


def resume(ctx: Any, job_id: str | None) -> str:
    """Continue a job that stopped (killed, disk full) from its last checkpoint."""
    if not job_id:
        return "No job to resume."
    job = manager(ctx).get(job_id)
    step = job.checkpoint_step()
    manager(ctx).resume(job_id)
    return f"▶ Resumed `{job_id}` from " + (f"its checkpoint at step {step}." if step else "the start (no checkpoint).")


def register(ctx: Any, job_id: str | None) -> tuple[str, str]:
    """Register a finished job's bundle; returns (message, registry key)."""
    if not job_id:
        raise ValueError("No finished job yet.")
    key = manager(ctx).register(manager(ctx).get(job_id), ctx.registry)
    return f"Registered: `{key[5:]}`.", key


# -- blind A/B -------------------------------------------------------------------------------------


AB_SETS = {"All edit kinds": None, "Colour and tone (global)": "global", "Geometry (flips, turns, zoom)": "geometry",
           "Objects": "object", "Compositions": "compose", "Geometry and compositions": "geometry,compose",
           "Colour, tone and compositions": "global,compose"}


def heldout_samples(category: str | None = None) -> list[dict]:
    """Held-out suite photos + instructions (the fixed test split, every sample), loaded once; ``category``
    keeps edit kinds of those categories (comma-separated: global, geometry, object, compose), so the
    comparison can be on edits like the ones that were rated."""
    if not _heldout:
        from training.eval import load_samples

        _heldout.extend(load_samples(split="test"))
    if category is None:
        return _heldout
    wanted = set(category.split(","))
    out = [s for s in _heldout if s.get("category") in wanted]
    if not out:
        raise ValueError(f"No held-out edits of category {category!r}.")
    return out


def ab_next(ctx: Any, old_key: str | None, new_key: str | None, seed: int | None = None,
            category: str | None = None) -> dict:
    """Edit one random held-out sample (of ``category``, or any) with both bundles; returns the round
    (images in random order)."""
    if not old_key or not new_key or old_key == new_key:
        raise ValueError("Pick two different bundles to compare.")
    from engine.api import edit_blocking
    from engine.image_io import fit_to_bundle
    from engine.sampler import SAMPLING_DEFAULTS
    from feedback.record import record_edit

    rng = random.Random(seed)
    s = rng.choice(heldout_samples(category))
    sd = rng.randrange(2**30)
    # EARL's sampling for both sides, whatever either bundle records for the studio's sliders
    settings = {"think": False, **SAMPLING_DEFAULTS, "ab_test": True}
    ids = {}
    images = {}
    for key in (old_key, new_key):
        b = ctx.registry.get(key)
        src = fit_to_bundle(b, s["source"])
        (d,) = edit_blocking(b, src, s["instruction"], n=1, seed=sd, temperature=settings["temperature"],
                             top_k=int(settings["top_k"]), top_p=settings["top_p"], preview_every=0)
        (cid,) = record_edit(ctx.store, b, src, s["instruction"], [d], settings)
        ids[key], images[key] = cid, d.image
    order = [old_key, new_key]
    rng.shuffle(order)
    return {"sample": s["id"], "instruction": s["instruction"], "source": s["source"],
            "left": ids[order[0]], "right": ids[order[1]], "left_image": images[order[0]],
            "right_image": images[order[1]], "t": time.time()}


def ab_rate(ctx: Any, rnd: dict | None, choice: str, rater: str) -> str:
    """Store the rating of the current round: choice 'left' | 'right' | 'tie'."""
    if not rnd:
        raise ValueError("Press “Next pair” first.")
    value = {"left": "A", "right": "B", "tie": "tie"}[choice]
    ids = [rnd["left"], rnd["right"]]
    ctx.store.add_rating(rater, "pair", value, ids, shown_order=ids)
    return ab_win_rates(ctx)


def ab_results(ctx: Any) -> dict[tuple[str, str], list[int]]:
    """Blind A/B tallies per pair of bundles: ``{(x, y): [rounds, wins of x, ties]}`` with x < y."""
    out: dict[tuple[str, str], list[int]] = {}
    ab = [r for r in ctx.store.ratings("pair") if r.value in ("A", "B", "tie")]
    needed = {i for r in ab for i in r.candidate_ids}
    cands = {c.id: c for c in ctx.store.candidates(needed)} if needed else {}
    for r in ab:
        a, b = (cands.get(i) for i in r.candidate_ids)
        if a is None or b is None or not (a.settings.get("ab_test") and b.settings.get("ab_test")):
            continue
        if a.bundle_id == b.bundle_id:
            continue
        x_won = r.value == ("A" if a.bundle_id < b.bundle_id else "B")
        s = out.setdefault(tuple(sorted((a.bundle_id, b.bundle_id))), [0, 0, 0])  # type: ignore[arg-type]
        s[0] += 1
        s[1] += r.value != "tie" and x_won
        s[2] += r.value == "tie"
    return out


def ab_win_rates(ctx: Any) -> str:
    """Markdown: per bundle, blind A/B rounds, wins, ties, win rate (ties count half) with its 95 % Wilson
    interval; then, per pair of bundles compared, whether the difference is measurable yet."""
    pairs = ab_results(ctx)
    if not pairs:
        return "No blind A/B ratings yet."
    stats: dict[str, list[int]] = {}
    for (x, y), (n, wx, t) in pairs.items():
        for bid, w in ((x, wx), (y, n - wx - t)):
            s = stats.setdefault(bid, [0, 0, 0])
            s[0] += n
            s[1] += w
            s[2] += t
    lines = ["| bundle | rounds | wins | ties | win rate | 95 % interval |", "|---|---:|---:|---:|---:|---:|"]
    for bid, (n, w, t) in sorted(stats.items(), key=lambda kv: -(kv[1][1] + kv[1][2] / 2) / kv[1][0]):
        lo, hi = wilson_interval(w + t / 2, n)
        lines.append(f"| {bid} | {n} | {w} | {t} | {(w + t / 2) / n:.0%} | {lo:.0%}–{hi:.0%} |")
    lines.append("")
    for (x, y), (n, wx, t) in sorted(pairs.items()):
        # said from the side that is ahead (an exact tie: in name order)
        if wx + t / 2 < n / 2:
            lines.append("- " + ab_verdict(y, x, n - wx - t, t, n))
        else:
            lines.append("- " + ab_verdict(x, y, wx, t, n))
    return "\n".join(lines)


# -- UI ------------------------------------------------------------------------------------------------


def build_finetune_tab(ctx: Any, model_picker: gr.Dropdown | None = None) -> None:
    """Called by ``studio.app`` inside its ``gr.Tabs()``. ``model_picker``: the Edit tab's model dropdown,
    which "Use the new model" switches to the new bundle (None: a tab built on its own)."""
    choices = ctx.registry.dropdown_choices()
    with gr.Tab("Fine-tune", id="finetune") as tab:
        data_md = gr.Markdown(counts_markdown(ctx.store.counts()), elem_id="ft-counts")
        job_id = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                method = gr.Radio(list(METHODS), value=next(iter(METHODS)), label="Method", elem_id="ft-method")
                base = gr.Dropdown(choices=choices, value=ctx.default_model, label="Start from", elem_id="ft-base")
                name = gr.Textbox(label="Name of the new bundle", placeholder="(automatic)", elem_id="ft-name")
                with gr.Row():
                    epochs = gr.Number(value=3, precision=0, minimum=1, label="Epochs (DPO / KTO)")
                    steps = gr.Number(value=200, precision=0, minimum=1, label="Steps (GRPO)")
                reward = gr.Dropdown(list(REWARDS), value=next(iter(REWARDS)), label="Reward (GRPO)")
                judge_url = gr.Textbox(label="Judge endpoint (GRPO with the MLLM judge)",
                                       placeholder="http://localhost:8000/v1")
                lora = gr.Checkbox(value=False, label="LoRA (train small adapters, merged at the end)")
                with gr.Row():
                    start_btn = gr.Button("Start ▶", variant="primary", elem_id="ft-start")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
                    resume_btn = gr.Button("Resume", elem_id="ft-resume")
                    use_btn = gr.Button("Use the new model", elem_id="ft-register")
            with gr.Column(scale=6, min_width=420):
                status = gr.Markdown("No job running. Pick a method and press **Start**.", elem_id="ft-status")
                # hidden until there is a point to draw (an empty plot shows an Infinity axis)
                curve = gr.LinePlot(pd.DataFrame({"step": [], "value": [], "metric": []}), x="step", y="value",
                                    color="metric", title="Loss and reward", height=260, elem_id="ft-curve",
                                    visible=False)
                log = gr.Textbox(label="Log (last lines)", lines=6, max_lines=12, interactive=False)
        timer = gr.Timer(2.0, active=False)

        def on_start(m, b, n, e, s, r, j, lo):
            try:
                msg, jid = start_job(ctx, m, b, n, e or 3, s or 200, r, j, lo)
            except ValueError as err:
                gr.Warning(str(err))
                return gr.update(), gr.update(), gr.Timer(active=False)
            return msg, jid, gr.Timer(active=True)

        def on_tick(jid):
            md, df, tail = poll(ctx, jid)
            done = not jid or "**done**" in md or "**failed**" in md or "**cancelled**" in md
            return md, gr.LinePlot(value=df, visible=not df.empty), tail, gr.Timer(active=not done)

        def on_enter(jid, b, o, n):
            # what changed since the page was built: ratings, bundles trained since, a job started
            # from another page or before a reload
            jid = current_job(ctx, jid)
            new = ctx.registry.dropdown_choices()
            keys = {k for _, k in new}
            pick = lambda v: v if v in keys else None  # noqa: E731
            md, plot, tail, timer_ = on_tick(jid)
            return (counts_markdown(ctx.store.counts()), gr.Dropdown(choices=new, value=pick(b)),
                    gr.Dropdown(choices=new, value=pick(o)), gr.Dropdown(choices=new, value=pick(n)),
                    ab_win_rates(ctx), jid, md, plot, tail, timer_)

        def on_register(jid):
            """Register the job's bundle and switch to it: the Edit tab edits with it, the blind A/B
            compares it (Bundle 2) with the bundle it was trained from (Bundle 1)."""
            try:
                msg, key = register(ctx, jid)
            except ValueError as err:
                gr.Warning(str(err))
                return (gr.update(),) * len(register_outputs)
            new = ctx.registry.dropdown_choices()
            parent = manager(ctx).get(jid).bundle
            parent_key = f"path:{Path(parent).resolve()}"
            old_side = (gr.Dropdown(choices=new, value=parent_key) if any(k == parent_key for _, k in new)
                        else gr.Dropdown(choices=new))
            out = [gr.Dropdown(choices=new), old_side, gr.Dropdown(choices=new, value=key)]
            if model_picker is not None:
                msg += (" It is now the Edit tab's model on this page (Edit tab ▸ Model; other pages pick it there), "
                        "and Bundle 2 of the blind A/B below.")
                out.append(gr.Dropdown(choices=new, value=key))
            else:
                msg += " It is now in the model pickers, and Bundle 2 of the blind A/B below."
            return (msg, *out)

        start_btn.click(on_start, [method, base, name, epochs, steps, reward, judge_url, lora], [status, job_id, timer],
                        api_name="finetune_start")
        timer.tick(on_tick, [job_id], [status, curve, log, timer], api_name="finetune_poll")
        cancel_btn.click(lambda j: cancel(ctx, j), [job_id], [status], api_name="finetune_cancel")

        def on_resume(jid):
            try:
                return resume(ctx, jid), gr.Timer(active=True)
            except ValueError as err:
                gr.Warning(str(err))
                return f"⚠️ {err}", gr.Timer(active=False)

        resume_btn.click(on_resume, [job_id], [status, timer])

        gr.Markdown("### Blind A/B — old vs new on held-out photos")
        rnd = gr.State(None)
        with gr.Row():
            old_dd = gr.Dropdown(choices=choices, value=ctx.default_model, label="Bundle 1", elem_id="ab-old")
            new_dd = gr.Dropdown(choices=choices, value=None, label="Bundle 2", elem_id="ab-new")
            ab_set = gr.Dropdown(list(AB_SETS), value=next(iter(AB_SETS)), label="Held-out edits", elem_id="ab-set")
            next_btn = gr.Button("Next pair", elem_id="ab-next")
        ab_instr = gr.Markdown("", elem_id="ab-instruction")
        with gr.Row():
            ab_src = gr.Image(label="Original", format="png", type="pil", interactive=False, height=200)
            ab_left = gr.Image(label="Left", format="png", type="pil", interactive=False, height=200)
            ab_right = gr.Image(label="Right", format="png", type="pil", interactive=False, height=200)
        with gr.Row():
            left_btn = gr.Button("◀ Left is better", elem_id="ab-left")
            tie_btn = gr.Button("Tie", elem_id="ab-tie")
            right_btn = gr.Button("Right is better ▶", elem_id="ab-right")
        rates = gr.Markdown(ab_win_rates(ctx), elem_id="ab-winrates")
        # the page's Rater box above the tabs; a box of its own when built outside the studio's page
        rater_box = getattr(ctx, "rater_box", None) or gr.Textbox(label="Your name (rater)", value="",
                                                                    elem_id="ab-rater")

        def on_next(o, n, which):
            try:
                r = ab_next(ctx, o, n, category=AB_SETS.get(which))
            except ValueError as err:
                gr.Warning(str(err))
                return None, gr.update(), None, None, None
            return r, f"**Instruction:** {r['instruction']}", r["source"], r["left_image"], r["right_image"]

        def on_rate(r, choice, typed, request: gr.Request):
            try:
                return ab_rate(ctx, r, choice, ctx.rater(request, typed)), None
            except ValueError as err:
                gr.Warning(str(err))
                return gr.update(), r

        next_btn.click(on_next, [old_dd, new_dd, ab_set], [rnd, ab_instr, ab_src, ab_left, ab_right], api_name="ab_next")
        def rate_as(choice: str):
            def fn(r: dict | None, typed: str, request: gr.Request):
                return on_rate(r, choice, typed, request)

            return fn

        for btn, choice in ((left_btn, "left"), (tie_btn, "tie"), (right_btn, "right")):
            btn.click(rate_as(choice), [rnd, rater_box], [rates, rnd], api_name=f"ab_{choice}")
        tab.select(on_enter, [job_id, base, old_dd, new_dd],
                   [data_md, base, old_dd, new_dd, rates, job_id, status, curve, log, timer], api_name="finetune_enter")
        register_outputs = [status, base, old_dd, new_dd] + ([model_picker] if model_picker is not None else [])
        use_btn.click(on_register, [job_id], register_outputs, api_name="finetune_register").then(
            lambda: counts_markdown(ctx.store.counts()), None, [data_md])
