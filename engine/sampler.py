"""Our own KV-cached decoding loop for the EARL sequence (not ``generate``; docs/ARCHITECTURE.md §4).

- A batch of N candidates, each with its own seed: candidate i draws one uniform number per generated
  token from ``torch.Generator().manual_seed(seeds[i])`` (drawn up front), and picks its token by
  inverse-CDF over its own (temperature / top-k / top-p filtered) distribution. So the same seed gives
  the same output in a batch or alone.
- The free-form constraint (``engine.constraint``) as precomputed additive masks.
- Optional classifier-free guidance, InstructPix2Pix style: conditional, no-instruction and
  no-image-no-instruction branches run as one batch; ``l = l_null + s_img (l_img - l_null) +
  s_txt (l_cond - l_img)``. Off (scales 1) means one branch and no extra compute.
- Per-token log-probs of what was sampled, with the definition of ``engine.logprobs`` (conditional
  branch, temperature 1, constraint mask, no top-k/top-p/CFG): training compares them directly with
  ``sequence_logprobs``.
- Cancellation through a ``threading.Event``; ``max_new_tokens`` bounds the reasoning.

Speed: for a plain ``Emu3ForCausalLM`` (no peft wrapper) decoding runs on the model's own weights with
a preallocated (static) KV cache, fused q/k/v and gate/up projections and precomputed rotary tables,
which removes most of the per-step framework overhead that dominates a 10-20M-parameter model on CPU.
Anything else (e.g. a LoRA-wrapped LM during training) runs through transformers' forward with a
``DynamicCache`` — same results, slower. Decode steps of small models also run on one thread by
default: ops of a few microseconds cannot amortise an OpenMP fork/join, and on a shared machine a
descheduled worker thread stalls every op (see ``threads``). The prompt's prefill is one large batch
of matrix products, so it keeps the caller's threads.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.constraint import CHOICE, VIS, FreeFormConstraint, State, constraint_for
from engine.layout import grid_positions
from engine.logprobs import base_lm

# EARL's sampling (temperature 1, top-k 2048, no top-p): the defaults of every entry point. A bundle may
# record other measured settings for UIs (``engine.bundle.sampling_defaults``).
SAMPLING_DEFAULTS: dict[str, float] = {"temperature": 1.0, "top_k": 2048, "top_p": 1.0}
SMALL_MODEL_PARAMS = 200_000_000  # below this, fused weight copies are cheap and one thread is best


@dataclass
class Sampled:
    """One generated token of one candidate."""

    candidate: int
    token: int
    logprob: float
    kind: str  # "text" (reasoning), "visual", "eol", "forced" (other structural tokens)
    row: int  # target-grid row of a visual / EOL token, -1 otherwise
    col: int  # its column (EOL: W), -1 otherwise
    finished: bool  # the candidate's last token (EOS)


@dataclass
class Generation:
    """A candidate's whole output (``sample_all``)."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finished: bool = False


@dataclass
class Guidance:
    """Classifier-free guidance: prompts of the other branches (one per candidate) and the scales."""

    image_prompts: list[list[int]]  # source image, no instruction
    null_prompts: list[list[int]] | None  # neither (not needed when image_scale == 1)
    text_scale: float = 1.0
    image_scale: float = 1.0


def make_guidance(tok: Any, grid: Any, n: int, think: bool, text_scale: float = 1.0,
                  image_scale: float = 1.0) -> Guidance | None:
    """Guidance branches for ``n`` candidates editing ``grid``; None when both scales are 1 (off)."""
    return batch_guidance(tok, [grid] * n, think, text_scale, image_scale)


def batch_guidance(tok: Any, grids: Sequence[Any], think: bool, text_scale: float = 1.0,
                   image_scale: float = 1.0) -> Guidance | None:
    """Guidance branches for candidates that edit their own sources (``grids[i]`` is candidate i's, e.g. a
    batch of eval samples); None when both scales are 1 (off)."""
    from engine.layout import build_prompt

    if text_scale == 1.0 and image_scale == 1.0:
        return None
    built: dict[int, list[int]] = {}  # one prompt per distinct source (make_guidance repeats one grid)
    for g in grids:
        if id(g) not in built:
            built[id(g)] = build_prompt(tok, g, "", think)
    image_only = [built[id(g)] for g in grids]
    null = build_prompt(tok, None, "", think) if image_scale != 1.0 else None
    return Guidance(image_only, [null] * len(grids) if null is not None else None, text_scale, image_scale)


class PromptTooLong(ValueError):
    """The prompt and the tokens to generate do not fit in the LM's positions (a readable message)."""


# -- model runners -------------------------------------------------------------------------------


def fp16_pack(w: torch.Tensor) -> Any:
    """fbgemm's packed half-precision copy of a weight, for ``quantized.linear_dynamic_fp16``."""
    return torch.ops.quantized.linear_prepack_fp16(w.detach().float().contiguous(), None)


# Packing is done once per LM and reused while its weights are unchanged (the stamp sees in-place
# training updates and swapped tensors).
_FP16_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_stamp(lm: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in lm.parameters())


def fp16_available() -> bool:
    """Whether this torch build has fbgemm's CPU kernels that ``fp16`` decoding uses."""
    engines = torch.backends.quantized.supported_engines
    return ("fbgemm" in engines or "x86" in engines) and hasattr(torch.ops.quantized, "linear_dynamic_fp16")


class _FastRunner:
    """Decoder forward on the LM's own weights with a static KV cache (plain Emu3ForCausalLM).

    ``fp16``: decoding steps (after the prefill) read half-precision copies of the weights, which fbgemm
    widens to float32 inside its matrix product (activations and sums stay float32). A decoding step of
    a small LM on a CPU is bound by streaming its float32 matrices from memory; half of that is read
    instead. Bundles are stored in bfloat16, and every bfloat16 weight of ordinary size is exactly a
    float16: for them the products are the float32 ones, up to summation order. (int8 weights would
    change the log-probs and need one call per row to keep candidates independent.)
    """

    def __init__(self, lm: Any, batch: int, max_len: int, fp16: bool = False):
        cfg = lm.config
        m = lm.model
        self.nh = cfg.num_attention_heads
        self.nkv = cfg.num_key_value_heads or self.nh
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        self.eps = cfg.rms_norm_eps
        p0 = m.embed_tokens.weight
        self.dtype, self.device = p0.dtype, p0.device
        fuse = sum(p.numel() for p in lm.parameters()) < SMALL_MODEL_PARAMS
        self.layers = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            if fuse:
                qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
                gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
            else:
                qkv = (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
                gu = (mlp.gate_proj.weight, mlp.up_proj.weight)
            self.layers.append((layer.input_layernorm.weight, qkv, a.o_proj.weight,
                                layer.post_attention_layernorm.weight, gu, mlp.down_proj.weight))
        self.norm = m.norm.weight
        self.head = lm.lm_head.weight
        self.half: list[tuple[Any, ...]] | None = None
        if fp16:
            if self.dtype != torch.float32 or self.device.type != "cpu" or not fp16_available():
                raise ValueError("fp16 decoding needs a float32 LM on the CPU and torch's fbgemm kernels")
            stamp = _weights_stamp(lm)
            cached = _FP16_CACHE.get(lm)
            if cached is None or cached[0] != stamp:
                pack = fp16_pack
                layers = [
                    (tuple(map(pack, qkv)) if isinstance(qkv, tuple) else pack(qkv), pack(wo),
                     tuple(map(pack, gu)) if isinstance(gu, tuple) else pack(gu), pack(wd))
                    for _, qkv, wo, _, gu, wd in self.layers
                ]
                cached = (stamp, layers, pack(self.head))
                _FP16_CACHE[lm] = cached
            _, self.half, self.half_head = cached
        pos = torch.arange(max_len, device=self.device)[None]
        cos, sin = m.rotary_emb(torch.zeros(1, dtype=self.dtype, device=self.device), pos)
        self.cos, self.sin = cos[0], sin[0]  # (max_len, hd)
        shape = (batch, self.nkv, max_len, self.hd)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in m.layers]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in m.layers]
        self.max_len = max_len

    @staticmethod
    def supports(lm: Any) -> bool:
        m = getattr(lm, "model", None)
        cfg = getattr(lm, "config", None)
        if m is None or cfg is None or not hasattr(m, "layers") or not hasattr(lm, "lm_head"):
            return False
        if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            return False
        rope = getattr(m, "rotary_emb", None)
        if rope is None or "dynamic" in str(getattr(rope, "rope_type", "default")):
            return False
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                if type(lin) is not nn.Linear or lin.bias is not None:
                    return False  # LoRA / quantized layers: use transformers' forward
        return type(lm.lm_head) is nn.Linear and lm.lm_head.bias is None

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Exactly Emu3RMSNorm: statistics in float32, weight applied in the input dtype; in float32
        # that is torch's fused rms_norm (one op instead of eight: decoding is op-overhead bound).
        if x.dtype == torch.float32 and w.dtype == torch.float32:
            return F.rms_norm(x, w.shape, w, self.eps)
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat((-x2, x1), -1) * sin

    @staticmethod
    def _lin(x: torch.Tensor, w: torch.Tensor, packed: Any) -> torch.Tensor:
        if packed is None:
            return F.linear(x, w)
        y = torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]), packed)
        return y.view(*x.shape[:-1], -1)

    def forward(self, emb: torch.Tensor, start: int, positions: torch.Tensor,
                attn_mask: torch.Tensor | None, all_positions: bool = False) -> torch.Tensor:
        """``emb`` (B, T, D) written at cache slots [start, start+T); returns last-position logits (B, V),
        or with ``all_positions`` every position's (B, T, V) (speculative decoding checks each guess).

        ``positions`` (B, T) rotary positions; ``attn_mask`` bool (B, 1, T, start+T) or None: causal for
        the prefill (start 0, no padding), every filled slot for T == 1; T > 1 after a prefill needs a mask.
        """
        b, t, _ = emb.shape
        end = start + t
        cos = self.cos[positions].unsqueeze(1)  # (B, 1, T, hd)
        sin = self.sin[positions].unsqueeze(1)
        nq, nk = self.nh * self.hd, self.nkv * self.hd
        h = emb
        causal = attn_mask is None and t > 1
        half = self.half if start > 0 else None  # decoding steps; the prefill keeps float32 weights
        lin = self._lin
        for i, (n1, qkv, wo, n2, gu, wd) in enumerate(self.layers):
            qq, qo, qg, qd = half[i] if half is not None else (None,) * 4
            x = self._rms(h, n1)
            if isinstance(qkv, tuple):
                q, k, v = (lin(x, w, qq[j] if qq else None) for j, w in enumerate(qkv))
                q = self._rope(q.view(b, t, self.nh, self.hd).transpose(1, 2), cos, sin)
                k = self._rope(k.view(b, t, self.nkv, self.hd).transpose(1, 2), cos, sin)
            else:
                qk, v = lin(x, qkv, qq).split([nq + nk, nk], -1)
                # q and k heads side by side: one rotary pass for both
                qk = self._rope(qk.view(b, t, self.nh + self.nkv, self.hd).transpose(1, 2), cos, sin)
                q, k = qk.split([self.nh, self.nkv], 1)
            self.k[i][:, :, start:end] = k
            self.v[i][:, :, start:end] = v.view(b, t, self.nkv, self.hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(
                q, self.k[i][:, :, :end], self.v[i][:, :, :end], attn_mask=attn_mask,
                is_causal=causal and start == 0, enable_gqa=self.nkv != self.nh,
            )
            h = h + lin(o.transpose(1, 2).reshape(b, t, nq), wo, qo)
            x = self._rms(h, n2)
            if isinstance(gu, tuple):
                g, u = lin(x, gu[0], qg[0] if qg else None), lin(x, gu[1], qg[1] if qg else None)
            else:
                g, u = lin(x, gu, qg).chunk(2, -1)
            h = h + lin(F.silu(g) * u, wd, qd)
        h = self._rms(h if all_positions else h[:, -1], self.norm)
        return lin(h, self.head, self.half_head if half is not None else None)


class _HFRunner:
    """transformers' forward with a DynamicCache (any LM, e.g. a peft-wrapped one)."""

    def __init__(self, lm: Any):
        from transformers import DynamicCache

        self.lm = lm
        self.cache = DynamicCache(config=base_lm(lm).config)

    def forward(self, emb: torch.Tensor, positions: torch.Tensor, attn_2d: torch.Tensor) -> torch.Tensor:
        out = self.lm(inputs_embeds=emb, attention_mask=attn_2d, position_ids=positions, cache=self.cache,
                      use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]


@contextlib.contextmanager
def num_threads(n: int | None):
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- token choice --------------------------------------------------------------------------------


def choose_tokens(scores: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Pick one token per row of masked ``scores`` (N, V) with uniforms ``u`` (N,); greedy at temperature 0.

    Row-independent, so a candidate's choice never depends on the other rows of the batch.
    """
    if temperature <= 0:
        return scores.argmax(-1)
    s = scores.float() / temperature
    v = s.shape[-1]
    if 0 < top_k < v:
        vals, idx = s.topk(top_k, dim=-1)  # sorted, descending
    else:
        vals, idx = s.sort(dim=-1, descending=True)
    probs = torch.softmax(vals, dim=-1)
    if top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of strictly better tokens
        probs = probs.masked_fill(before > top_p, 0.0)  # the best token always stays
    cum = probs.cumsum(-1)
    target = u.to(cum.dtype).unsqueeze(-1) * cum[:, -1:]
    j = (cum < target).sum(-1).clamp_(max=vals.shape[-1] - 1)
    return idx.gather(-1, j.unsqueeze(-1)).squeeze(-1)


# -- the loop ----------------------------------------------------------------------------------------


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    valid = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s, dtype=torch.long)
        valid[i, n - len(s) :] = True
    return ids, valid


def sample(
    bundle: Any,
    prompts: Sequence[Sequence[int]],
    h: int,
    w: int,
    seeds: Sequence[int],
    think: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance: Guidance | None = None,
    max_new_tokens: int | None = None,
    cancel: threading.Event | None = None,
    threads: int | None = None,
    fast: bool | None = None,
    forced_prefix: Sequence[Sequence[int]] | None = None,
    fp16: bool = False,
    speculate: int = 0,
    transpose: bool = False,
) -> Iterator[list[Sampled]]:
    """Decode one candidate per prompt; yields, per decoding step, the tokens produced at that step.

    ``prompts`` come from ``layout.build_prompt`` (they may differ in length: they are left-padded).
    ``seeds[i]`` drives candidate i. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 are off.
    ``max_new_tokens`` bounds the whole generation (reasoning gets what the image leaves); None: the
    image plus 512 reasoning tokens in think mode. Stops early, between steps, when ``cancel`` is set.
    ``threads``: torch threads while decoding (None: 1 for small models on CPU after a prefill on the
    caller's threads, else unchanged).
    ``fast``: force (True) or forbid (False) the static-cache path; None picks it when supported.
    ``forced_prefix[i]``: the first generated tokens of candidate i are these, not sampled (e.g. the
    first rows of a known target, to see how the model continues them); each must be allowed by the
    constraint at its position (ValueError otherwise); their reported log-probs are 0.
    ``fp16``: decoding steps read half-precision weights (``_FastRunner``; float32 LM on CPU only,
    ValueError otherwise): faster on a CPU. Exact for weights that are bfloat16 values (every stored
    bundle); a model being trained in float32 would be rounded, so training leaves it off (the default).
    ``speculate`` > 1: speculative decoding with guesses copied from the prompt's source image
    (``engine.drafts``): each candidate feeds its token and up to ``speculate`` - 1 guesses per forward
    pass (as many as pay off, given how often its guesses have been right). Each guess is checked against
    the token the candidate's own uniform picks from the logits before it, and the first wrong one ends
    the candidate's run, so tokens and log-probs are those of decoding one token at a time (up to float
    summation order); candidates of a batch keep their own runs. Used on the static-cache path without
    guidance or forced prefixes; elsewhere it is off.
    ``transpose``: each candidate's output grid may be H×W or the transposed W×H, the model choosing at the
    header (``engine.constraint``); candidates of one batch may come out in different shapes, and each
    ``Sampled`` row / col is in its own candidate's grid.
    """
    if len(prompts) == 0:
        return
    d = _Decoding(bundle, prompts, h, w, seeds, think, temperature, top_k, top_p, guidance, max_new_tokens, cancel,
                  threads, fast, forced_prefix, fp16, speculate, transpose)
    # The model runs inside inference mode (and with ``threads``) only while this generator computes:
    # never across a ``yield``, so the caller's own code (e.g. training between steps) is unaffected.
    it = d.steps()
    first = True  # the first step is the prefill (and the first token choice)
    while True:
        with torch.inference_mode(), num_threads(d.prefill_threads if first else d.threads):
            try:
                events = next(it)
            except StopIteration:
                return
        first = False
        yield events


class _Decoding:
    """One ``sample`` call: the constraint, each candidate's state and uniforms, the prompt batch and the
    model runner. ``steps`` runs the prefill and then one of two loops, ``plain`` (a token per candidate
    per forward pass, optionally with guidance) or ``speculative``; both choose tokens with ``_pick`` and
    move candidates on with ``_take``."""

    def __init__(self, bundle: Any, prompts: Sequence[Sequence[int]], h: int, w: int, seeds: Sequence[int],
                 think: bool, temperature: float, top_k: int, top_p: float, guidance: Guidance | None,
                 max_new_tokens: int | None, cancel: threading.Event | None, threads: int | None,
                 fast: bool | None, forced_prefix: Sequence[Sequence[int]] | None, fp16: bool, speculate: int,
                 transpose: bool = False):
        n = self.n = len(prompts)
        if len(seeds) != n:
            raise ValueError(f"{n} prompts but {len(seeds)} seeds")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError("temperature must be >= 0, top_p in (0, 1], top_k >= 0")
        self.bundle, self.temperature, self.top_k, self.top_p, self.cancel = bundle, temperature, top_k, top_p, cancel
        lm = self.lm = bundle.lm
        base = base_lm(lm)
        device = self.device = next(lm.parameters()).device
        con = self.con = constraint_for(bundle.tokenizer, h, w, think, base.config.vocab_size, max_new_tokens, device,
                                        transpose=transpose)
        self.sp = con.sp

        # Branches of classifier-free guidance (row blocks of N): cond [, image-only [, null]].
        branches = [list(map(list, prompts))]
        if guidance is not None and (guidance.text_scale != 1.0 or guidance.image_scale != 1.0):
            if len(guidance.image_prompts) != n:
                raise ValueError("guidance needs one image-only prompt per candidate")
            branches.append(list(map(list, guidance.image_prompts)))
            if guidance.image_scale != 1.0:
                if guidance.null_prompts is None or len(guidance.null_prompts) != n:
                    raise ValueError("image guidance needs one null prompt per candidate")
                branches.append(list(map(list, guidance.null_prompts)))
        else:
            guidance = None
        self.text_scale = guidance.text_scale if guidance else 1.0
        self.image_scale = guidance.image_scale if guidance else 1.0
        # Past the positions it was built for, nothing the LM writes has been trained: refuse instead.
        limit = getattr(base.config, "max_position_embeddings", None)
        need = max(len(q) for b in branches for q in b) + con.max_new_tokens
        if limit and need > limit:
            raise PromptTooLong(
                f"The instruction is too long for this model: it reads at most {limit} tokens, and this photo with "
                f"this instruction needs {need}. Shorten the instruction by about {need - limit} tokens (a token "
                "is 3–5 characters).")
        self.nb = len(branches)

        # Uniforms for every token of every candidate, from the candidate's own generator.
        self.u_all = torch.stack([
            torch.rand(con.max_new_tokens, generator=torch.Generator().manual_seed(int(s))) for s in seeds
        ]).to(device)
        self.states = [con.start() for _ in range(n)]
        self.done = [False] * n
        self.step_idx = 0  # index of the next generated token (the same for every candidate)
        self.prefixes = ([list(map(int, p)) for p in forced_prefix] if forced_prefix is not None
                         else [[] for _ in range(n)])
        if len(self.prefixes) != n:
            raise ValueError(f"{n} prompts but {len(self.prefixes)} forced prefixes")
        head, head_feats = self._forced_head()
        self._prompt_batch(branches, head, head_feats)

        # Grid-embedding rows of every template position (index 0: none), gathered per step.
        self.ge = getattr(bundle, "grid_embed", None)
        self.emb_w = lm.get_input_embeddings().weight
        if self.ge is not None:
            from engine.logprobs import _check_grid_range

            _check_grid_range(self.ge, con.feat_row, con.feat_col)
        self.use_fast = _FastRunner.supports(lm) if fast is None else fast
        if fp16 and not self.use_fast:
            raise ValueError("fp16 decoding needs the static-cache path (a plain Emu3ForCausalLM, fast not False)")
        self.fp16, self.speculate = fp16, speculate
        self.drafters: list[dict[tuple[int, int], Any]] | None = None  # per candidate, one per output shape
        if speculate > 1 and self.use_fast and self.nb == 1 and forced_prefix is None:
            from engine.drafts import CopyDrafter, code_permutations, source_grid

            srcs = [source_grid(bundle.tokenizer, list(p)) for p in prompts]
            if all(g is not None for g in srcs):
                perms = code_permutations(getattr(bundle, "vq", None))
                self.drafters = [{hw: CopyDrafter(g, hw, perms) for hw in con.shapes} for g in srcs]
                # rejected guesses leave unused cache slots behind: room for as many again
                self.max_len += con.max_new_tokens
        self.prefill_threads = self.threads = threads
        if threads is None and sum(p.numel() for p in lm.parameters()) < SMALL_MODEL_PARAMS and device.type == "cpu":
            self.threads = 1  # prefill_threads stays None: the caller's setting

    # -- setup ------------------------------------------------------------------------------------

    def _forced_head(self) -> tuple[list[int], list[tuple[int, int, int]]]:
        """Forced tokens common to all candidates at the start (no-think: IMG_START "H*W" IMG_TOKEN): they
        go into the prefill instead of one decoding step each; their events come with the first step."""
        con, states = self.con, self.states
        head: list[int] = []
        head_feats: list[tuple[int, int, int]] = []
        self.first_events: list[Sampled] = []
        while all(con.forced(s) is not None for s in states) and not con.only_forced_left(states[0]):
            t = con.forced(states[0])
            for i, s in enumerate(states):
                self.prefix_token(i, s)  # a prefix must agree with the template's forced tokens
            head.append(t)
            head_feats.append(con.features(states[0]))
            for i, s in enumerate(states):
                self.first_events.append(_event(con, s, i, t, 0.0, False))
                con.advance(s, t)
            self.step_idx += 1
        return head, head_feats

    def _prompt_batch(self, branches: list[list[list[int]]], head: list[int],
                      head_feats: list[tuple[int, int, int]]) -> None:
        """Left-padded ids, validity, grid features and rotary positions of every branch's prompts + head."""
        tok = self.bundle.tokenizer
        all_prompts = [p + head for br in branches for p in br]
        self.ids, self.valid = _left_pad(all_prompts, self.sp.pad)
        p_len = self.p_len = self.ids.shape[1]
        self.feats = torch.zeros((3, len(all_prompts), p_len), dtype=torch.long)
        for r, p in enumerate(all_prompts):
            gp = grid_positions(tok, p[: len(p) - len(head)])
            f = torch.stack(gp) if gp[0].numel() else torch.zeros((3, 0), dtype=torch.long)
            if head:
                f = torch.cat([f, torch.tensor(head_feats, dtype=torch.long).T], 1)
            self.feats[:, r, p_len - len(p) :] = f
        n_pad = (~self.valid).sum(1)
        self.any_pad = bool(n_pad.any())  # prompts of different lengths: every pass needs a mask
        self.positions = (torch.arange(p_len)[None] - n_pad[:, None]).clamp(min=0)
        self.max_len = p_len + self.con.max_new_tokens

    # -- shared by both loops -----------------------------------------------------------------------

    def prefix_token(self, i: int, s: State) -> int | None:
        """Candidate i's forced-prefix token at this step (checked against the constraint), if any."""
        if self.step_idx >= len(self.prefixes[i]):
            return None
        t = self.prefixes[i][self.step_idx]
        con = self.con
        if not con.allows(con.mask_row(s), t):
            raise ValueError(f"forced prefix of candidate {i}: token {t} at position {self.step_idx} is not "
                             "allowed by the constraint")
        return t

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _pick(self, scores: torch.Tensor, lp_scores: torch.Tensor, u: torch.Tensor) -> tuple[list[int], list[float]]:
        """Tokens chosen from masked ``scores`` (rows, V) with uniforms ``u`` (rows,), and their log-probs
        under ``lp_scores`` (the conditional branch, masked: ``engine.logprobs``' definition)."""
        lp = torch.log_softmax(lp_scores, dim=-1)
        chosen = choose_tokens(scores, u, self.temperature, self.top_k, self.top_p)
        return chosen.tolist(), lp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()

    def _take(self, i: int, t: int, lp: float, events: list[Sampled]) -> bool:
        """Candidate i writes token ``t``: its events (plus the forced EOF IMG_END EOS tail once nothing else
        is left) go to ``events``; returns whether it finished."""
        con, s = self.con, self.states[i]
        before = s.pos
        fin = con.advance(s, t)
        events.append(_event(con, s, i, t, lp, fin, before=before))
        if not fin and con.only_forced_left(s):
            events += _forced_tail(con, s, i)
            fin = True
        if fin:
            self.done[i] = True
        return fin

    def _feed(self, toks: list[list[int]], at: list[list[int]]) -> torch.Tensor:
        return _feed_embeddings(self.emb_w, self.grid_table, toks, at, self.device)

    # -- prefill and the loops ------------------------------------------------------------------------

    def steps(self) -> Iterator[list[Sampled]]:
        from engine.logprobs import embed_inputs

        con, device, p_len = self.con, self.device, self.p_len
        if self.ge is not None:
            gtab = self.ge(con.feat_image[None].to(device), con.feat_row[None].to(device),
                           con.feat_col[None].to(device))[0]
            self.grid_table = torch.cat([torch.zeros_like(gtab[:1]), gtab]).to(self.emb_w.dtype)
        else:
            self.grid_table = None
        emb = embed_inputs(self.bundle, self.ids.to(device), tuple(self.feats.to(device)))
        self.key_valid = torch.ones((self.n * self.nb, self.max_len), dtype=torch.bool, device=device)
        self.key_valid[:, :p_len] = self.valid.to(device)
        valid = self.valid.to(device)
        if self.use_fast:
            self.runner = _FastRunner(base_lm(self.lm), self.n * self.nb, self.max_len, fp16=self.fp16)
            mask = None
            if self.any_pad:
                qpos = torch.arange(p_len, device=device)
                causal = qpos[None, :] <= qpos[:, None]
                mask = (causal[None] & valid[:, None, :]) | torch.eye(p_len, dtype=torch.bool, device=device)[None]
                mask = mask[:, None]
            logits = self.runner.forward(emb, 0, self.positions.to(device), mask)
        else:
            self.runner = _HFRunner(self.lm)
            logits = self.runner.forward(emb, self.positions.to(device), valid.long())
        if self.first_events:
            yield self.first_events
        pos_now = self.positions[:, -1].to(device)  # rotary position of the last token fed, per row
        if self.drafters is not None:
            yield from self.speculative(logits, pos_now)
        else:
            yield from self.plain(logits, pos_now)

    def plain(self, logits: torch.Tensor, pos_now: torch.Tensor) -> Iterator[list[Sampled]]:
        """One token per candidate per forward pass (two when the next one is forced for all), with
        guidance when its branches are there."""
        con, sp, n, device = self.con, self.sp, self.n, self.device
        states, done = self.states, self.done
        cur = self.p_len  # next cache slot
        while True:
            if self.cancelled():
                return
            active = [i for i in range(n) if not done[i]]
            if not active:
                return
            forced = [sp.pad if done[i] else con.forced(s) for i, s in enumerate(states)]
            for i in active:
                pt = self.prefix_token(i, states[i])
                if pt is not None:
                    forced[i] = pt
            if all(forced[i] is not None for i in active):
                toks = [forced[i] if forced[i] is not None else sp.pad for i in range(n)]
                lps = [0.0] * n
            else:
                rows_idx = [0 if done[i] else con.mask_row(s) for i, s in enumerate(states)]
                chosen, lp_chosen = self._pick(*self._guided(logits, rows_idx), self.u_all[:, self.step_idx])
                toks = [forced[i] if forced[i] is not None else chosen[i] for i in range(n)]
                lps = [0.0 if forced[i] is not None else lp_chosen[i] for i in range(n)]
            events: list[Sampled] = []
            feed_pos = [0] * n  # template position + 1 of each fed token (0: text / none)
            for i in active:
                s = states[i]
                feed_pos[i] = s.pos + 1 if s.pos >= 0 else 0
                self._take(i, toks[i], lps[i], events)
            self.step_idx += 1
            yield events
            if all(done) or self.cancelled() or cur >= self.max_len:
                return
            # Feed this step's tokens (finished candidates get PAD; their rows are ignored).
            feed_tok = [[sp.pad] if done[i] else [toks[i]] for i in range(n)]
            feed_at = [[0] if done[i] else [feed_pos[i]] for i in range(n)]
            live = [i for i in range(n) if not done[i]]
            if cur + 2 <= self.max_len and all(
                con.forced(states[i]) is not None and not con.only_forced_left(states[i]) for i in live
            ):
                # The next token is forced for every candidate still going (the EOL after a row's last
                # code): it goes into the same forward pass, which costs about what one token costs.
                extra: list[Sampled] = []
                for i in range(n):
                    if done[i]:
                        feed_tok[i].append(sp.pad)
                        feed_at[i].append(0)
                        continue
                    st = states[i]
                    ft = con.forced(st)
                    self.prefix_token(i, st)  # a forced prefix must agree with the template here too
                    p_before = st.pos
                    extra.append(_event(con, st, i, ft, 0.0, con.advance(st, ft), before=p_before))
                    feed_tok[i].append(ft)
                    feed_at[i].append(p_before + 1)
                self.step_idx += 1
                yield extra
                if self.cancelled():
                    return
            t_new = len(feed_tok[0])
            e = self._feed(feed_tok * self.nb, feed_at * self.nb)  # (rows, t_new, D)
            new_pos = pos_now[:, None] + torch.arange(1, t_new + 1, device=device)
            pos_now = new_pos[:, -1]
            if self.use_fast:
                m2 = _pass_mask(self.key_valid, cur, t_new) if self.any_pad or t_new > 1 else None
                logits = self.runner.forward(e, cur, new_pos, m2)
            else:
                logits = self.runner.forward(e, new_pos, self.key_valid[:, : cur + t_new].long())
            cur += t_new

    def _guided(self, logits: torch.Tensor, rows_idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores to sample from, masked conditional logits for the log-probs) of a plain step."""
        n = self.n
        cond = logits[:n].float()
        m = self.con.masks[torch.tensor(rows_idx, device=self.device)]
        if self.nb == 1:
            return cond + m, cond + m
        l_img = logits[n : 2 * n].float()
        if self.nb == 3:
            l_null = logits[2 * n :].float()
            guided = l_null + self.image_scale * (l_img - l_null) + self.text_scale * (cond - l_img)
        else:
            guided = l_img + self.text_scale * (cond - l_img)
        return guided + m, cond + m

    def speculative(self, logits: torch.Tensor, pos_now: torch.Tensor) -> Iterator[list[Sampled]]:
        """The decoding loop with guesses (``speculate``), after the prefill's ``logits``. Each pass feeds
        every candidate's last token and its guesses for the tokens after it; a candidate keeps the tokens
        its own uniforms pick up to its first wrong guess, so candidates of a batch move at their own pace.
        Rejected guesses' cache slots are overwritten by the next pass when every candidate kept as many
        (always at batch 1), else masked out for good (``key_valid``) while the next pass writes after them."""
        from engine.drafts import best_draft_length

        con, sp, n, device = self.con, self.sp, self.n, self.device
        states, done, drafters, key_valid = self.states, self.done, self.drafters, self.key_valid
        assert drafters is not None
        step = [self.step_idx] * n  # index of each candidate's next uniform
        accept = [0.3] * n  # running share of each candidate's right guesses: guess once they prove right
        block = logits[:, None]  # (n, T, V): the last pass's logits at every position it fed
        guesses: list[list[int]] = [[] for _ in range(n)]  # what each candidate fed after its token
        last_tok, last_at = [sp.pad] * n, [0] * n
        cur, pass_slot = self.p_len, -1
        holes = False  # whether key_valid masks out rejected slots after the prompt
        n_u = self.u_all.shape[1]
        row_of_pos = con.row_of_pos.tolist()
        while True:
            if self.cancelled():
                return
            live = [i for i in range(n) if not done[i]]
            if not live:
                return
            t_blk = block.shape[1]
            # Every position's mask row and uniform as if all guesses before it were right (the only case
            # in which its choice is used): one batched choice for the whole block.
            rows_idx = [[0] * t_blk for _ in range(n)]
            u_idx = [[0] * t_blk for _ in range(n)]
            for i in live:
                s, m = states[i], len(guesses[i])
                rows_idx[i][0] = con.mask_row(s)
                if m:
                    rows_idx[i][1 : m + 1] = row_of_pos[s.pos + 1 : s.pos + 1 + m]
                u_idx[i] = [min(step[i] + j, n_u - 1) for j in range(t_blk)]
            scores = (block.float() + con.masks[torch.tensor(rows_idx, device=device)]).view(n * t_blk, -1)
            u = torch.gather(self.u_all, 1, torch.tensor(u_idx, device=device)).reshape(-1)
            flat_tok, flat_lp = self._pick(scores, scores, u)
            events: list[Sampled] = []
            kept = [0] * n
            for i in live:
                s, g, j = states[i], guesses[i], 0
                while True:
                    ft = con.forced(s)
                    t, lpv = (ft, 0.0) if ft is not None else (flat_tok[i * t_blk + j], flat_lp[i * t_blk + j])
                    before = s.pos
                    if before >= 0 and con.template[before] == VIS:
                        r_, c_ = int(con.feat_row[before]), int(con.feat_col[before])
                        code = int(sp.code_of[t])
                        hit = drafters[i][con.grid_shape(s)].observe(r_, c_, code)
                        accept[i] = 0.95 * accept[i] + 0.05 * float(hit)
                    step[i] += 1
                    if self._take(i, t, lpv, events):
                        break
                    last_tok[i], last_at[i] = t, (before + 1 if before >= 0 else 0)
                    if j < len(g) and t == g[j]:
                        j += 1  # the guess fed after this token was right: the next logits are valid
                        continue
                    break
                kept[i] = j
            yield events
            if all(done) or self.cancelled():
                return
            live = [i for i in range(n) if not done[i]]
            if pass_slot >= 0:  # keep each candidate's token and right guesses of the last pass
                if len({kept[i] for i in live}) == 1:
                    cur = pass_slot + 1 + kept[live[0]]  # the same for all: the next pass overwrites the rest
                else:
                    for i in live:  # candidates kept different counts: mask out each one's rejected slots
                        key_valid[i, pass_slot + 1 + kept[i] : pass_slot + t_blk] = False
                    holes = True
                pos_now = pos_now + 1 + torch.tensor(kept, device=device)
            # every live candidate gets a token per pass, so the one whose guesses miss most sets the pace
            k = best_draft_length(min(accept[i] for i in live), n, self.speculate)
            n_g = [0] * n
            for i in live:
                s = states[i]
                if s.pos >= 0:
                    n_g[i] = min(k - 1, con.last_free(s.pos) - s.pos + 1)
                    if n_g[i] == 0 and con.forced(s) is not None:
                        n_g[i] = 1  # a forced EOL shares the pass, as in the plain loop
            t_new = 1 + min(max(n_g), self.max_len - cur - 1)
            if t_new < 1:
                return
            feed_tok, feed_at = [], []
            for i in range(n):
                g, at = [], []
                if not done[i]:
                    s = states[i]
                    for q in range(min(n_g[i], t_new - 1)):
                        p_ = s.pos + q
                        tt = con.template[p_]
                        if tt == CHOICE:
                            tt = con.choice_tokens[0]  # guess the source's shape (guesses follow its branch)
                        elif tt == VIS:
                            code = drafters[i][con.grid_shape(s)].guess(int(con.feat_row[p_]), int(con.feat_col[p_]))
                            tt = int(sp.visual_ids[code if code is not None else 0])
                        g.append(tt)
                        at.append(p_ + 1)
                guesses[i] = g
                pad = t_new - 1 - len(g)
                feed_tok.append([last_tok[i] if not done[i] else sp.pad] + g + [sp.pad] * pad)
                feed_at.append([last_at[i] if not done[i] else 0] + at + [0] * pad)
            e = self._feed(feed_tok, feed_at)
            new_pos = pos_now[:, None] + torch.arange(1, t_new + 1, device=device)
            # one token per candidate over a cache without holes attends to all of it: no mask
            m2 = _pass_mask(key_valid, cur, t_new) if t_new > 1 or holes or self.any_pad else None
            block = self.runner.forward(e, cur, new_pos, m2, all_positions=True)
            pass_slot = cur
            cur += t_new


def _event(con: FreeFormConstraint, s: State, cand: int, token: int, lp: float, fin: bool,
           before: int | None = None) -> Sampled:
    """Describe ``token`` generated at template position ``before`` (default: ``s.pos`` before advancing)."""
    p = s.pos if before is None else before
    if p < 0:
        return Sampled(cand, token, lp, "text", -1, -1, fin)
    kind = "visual" if con.template[p] == VIS else ("eol" if token == con.sp.eol else "forced")
    if kind == "forced" and p < con.image_offset:
        kind = "text"  # THINK_END pieces belong to the reasoning text
    if kind in ("visual", "eol"):
        return Sampled(cand, token, lp, kind, int(con.feat_row[p]), int(con.feat_col[p]), fin)
    return Sampled(cand, token, lp, kind, -1, -1, fin)


def _forced_tail(con: FreeFormConstraint, s: State, cand: int) -> list[Sampled]:
    """Advance ``s`` through the EOF IMG_END EOS tail (forced and final: no model call needed)."""
    out, fin = [], False
    while not fin:
        ft, p_before = con.forced(s), s.pos
        fin = con.advance(s, ft)
        out.append(_event(con, s, cand, ft, 0.0, fin, before=p_before))
    return out


def _feed_embeddings(emb_w: torch.Tensor, grid_table: torch.Tensor | None, toks: list[list[int]],
                     at: list[list[int]], device: torch.device) -> torch.Tensor:
    """(rows, T, D) inputs of the tokens ``toks`` fed at template positions + 1 ``at`` (0: none)."""
    e = F.embedding(torch.tensor(toks, device=device), emb_w)
    if grid_table is not None:
        e = e + grid_table[torch.tensor(at, device=device)]
    return e


def _pass_mask(key_valid: torch.Tensor, cur: int, t_new: int) -> torch.Tensor:
    """(rows, 1, t_new, cur + t_new) bool: a pass of ``t_new`` tokens written at slot ``cur`` sees the valid
    cached slots and, within itself, the tokens up to its own."""
    m = key_valid[:, None, None, : cur + t_new].expand(-1, 1, t_new, -1).clone()
    m[..., cur:] &= torch.ones((t_new, t_new), dtype=torch.bool, device=key_valid.device).tril()
    return m


def fp16_default(bundle: Any) -> bool:
    """Whether ``engine.edit`` decodes with half-precision weights when not told: a small plain float32 LM
    on a CPU with fbgemm (where decoding is bound by reading the weights from memory)."""
    lm = getattr(bundle, "lm", None)
    if lm is None or not _FastRunner.supports(lm) or not fp16_available():
        return False
    p = next(lm.parameters())
    return p.device.type == "cpu" and p.dtype == torch.float32 and sum(q.numel() for q in lm.parameters()) < SMALL_MODEL_PARAMS


def sample_all(bundle: Any, prompts: Sequence[Sequence[int]], h: int, w: int, seeds: Sequence[int],
               **kw: Any) -> list[Generation]:
    """Run ``sample`` to the end; one ``Generation`` per candidate."""
    out = [Generation() for _ in prompts]
    for events in sample(bundle, prompts, h, w, seeds, **kw):
        for e in events:
            g = out[e.candidate]
            g.tokens.append(e.token)
            g.logprobs.append(e.logprob)
            g.finished = g.finished or e.finished
    return out


