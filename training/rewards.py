"""Rewards for RL (GRPO) behind one interface: ``Reward.score(samples) -> list[float | None]``.

``None`` means "skipped": the sample gets no reward and its group is scored without it (GRPO drops
it). A reward is never made up: a judge reply that cannot be parsed is retried, then skipped.

- ``VerifierReward`` — the programmatic verifier (``training.verifier``) on the decoded output vs the
  suite's exact ground truth; EARL-nano's stand-in for EARL's VIEScore judge.
- ``JudgeReward`` — an MLLM judge with VIEScore-style prompts (semantic consistency: two scores,
  perceptual quality: two scores; SC = min, PQ = min, overall = sqrt(SC·PQ), 0–10) either through an
  OpenAI-compatible chat-completions endpoint (EARL ran Qwen2.5-VL-72B with ``vllm serve``) or a local
  transformers VLM (``AutoModelForImageTextToText`` from a folder).
- ``RewardModelReward`` — a Bradley–Terry reward model learned from ratings (``training.reward_model``).
- ``CombinedReward`` — a weighted sum of rewards; a sample skipped by any part is skipped.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class RewardSample:
    """One edit to score. ``target``/``mask`` exist for suite samples (verifier); the token fields let
    reward models that read the LM's features score without re-encoding."""

    source: Image.Image
    output: Image.Image | None  # None: the generation could not be decoded
    instruction: str
    target: Image.Image | None = None
    mask: np.ndarray | None = None
    kind: str | None = None
    prompt_ids: list[int] | None = None
    gen_ids: list[int] | None = None
    grid_hw: tuple[int, int] | None = None
    think: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class Reward:
    """Base class. Subclasses implement ``score``; ``stats`` counts skips and retries for the logs."""

    name = "reward"

    def __init__(self) -> None:
        self.stats: dict[str, int] = {"scored": 0, "skipped": 0}

    def score(self, samples: Sequence[RewardSample]) -> list[float | None]:
        raise NotImplementedError

    def _count(self, out: list[float | None]) -> list[float | None]:
        self.stats["scored"] += sum(v is not None for v in out)
        self.stats["skipped"] += sum(v is None for v in out)
        return out


class VerifierReward(Reward):
    """The programmatic verifier's ``field`` (overall, sc, pq, success, overedit), 0–10, or ``closeness``
    (``verifier.closeness``, −10…10: a dense shaping score for edits where every candidate scores 0) or
    ``layout`` (``verifier.layout_closeness``: the same on the coarse luminance layout alone) or
    ``layout_corr`` (``verifier.layout_correlation``: a layout score that gives flat outputs 0)."""

    name = "verifier"

    def __init__(self, field: str = "overall") -> None:
        super().__init__()
        from training.verifier import SHAPING

        if field not in ("overall", "sc", "pq", "success", "overedit", *SHAPING):
            raise ValueError(f"unknown verifier field {field!r}")
        self.field = field

    def score(self, samples: Sequence[RewardSample]) -> list[float | None]:
        from training import verifier

        out: list[float | None] = []
        for s in samples:
            if s.output is None:
                # an undecodable output is a failed edit, not a missing score: the lowest score
                out.append(verifier.SHAPING_FAILED if self.field in verifier.SHAPING else 0.0)
            elif s.target is None:
                out.append(None)  # no ground truth (e.g. a user's photo): the verifier cannot say
            elif self.field in verifier.SHAPING:
                out.append(verifier.SHAPING[self.field](s.source, s.output, s.target))
            else:
                out.append(float(getattr(verifier.score(s.source, s.output, s.target, s.mask), self.field)))
        return self._count(out)


class CombinedReward(Reward):
    """``sum_i w_i · r_i`` over ``parts`` = [(reward, weight), …]; None when any part skipped the sample."""

    name = "combined"

    def __init__(self, parts: Sequence[tuple[Reward, float]]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("CombinedReward needs at least one (reward, weight)")
        self.parts = list(parts)

    def score(self, samples: Sequence[RewardSample]) -> list[float | None]:
        cols = [r.score(samples) for r, _ in self.parts]
        out: list[float | None] = []
        for i in range(len(samples)):
            vals = [c[i] for c in cols]
            out.append(None if any(v is None for v in vals)
                       else float(sum(w * v for (_, w), v in zip(self.parts, vals, strict=True))))
        return self._count(out)


# -- MLLM judge -------------------------------------------------------------------------------------

# VIEScore's two questions, in our own words. Each asks for a JSON object with a two-number score list.
JUDGE_CONTEXT = (
    "You are a careful, strict evaluator of image edits. Score on a 0 to 10 scale with integers. "
    "Reply with a JSON object only, like {\"reasoning\": \"...\", \"score\": [a, b]} — no other text."
)
SC_PROMPT = (
    "The first image is the original photo. The second image is the result of an AI editing the original "
    "according to this instruction: \"{instruction}\".\n"
    "Give two scores:\n"
    "a) how completely and correctly the instruction was carried out in the second image "
    "(0: not at all, 10: exactly as asked);\n"
    "b) how well everything the instruction did not ask to change was left as it was "
    "(0: the photo was changed far beyond the request, 10: nothing else changed)."
)
PQ_PROMPT = (
    "This image was produced by an AI. Give two scores:\n"
    "a) how natural and realistic it looks — lighting, shadows, colours and proportions "
    "(0: clearly unnatural, 10: like a real photo);\n"
    "b) how free it is of artefacts — blur, noise, blockiness, distortions, smeared textures "
    "(0: heavily damaged, 10: no artefacts)."
)

_JSON_OBJ = re.compile(r"\{.*\}", re.S)
_SCORE_LIST = re.compile(r"[\"']?score[\"']?\s*[:=]\s*\[([^\]]*)\]", re.I)


def parse_judge_reply(text: str, n: int = 2) -> list[float] | None:
    """The ``n`` scores of a judge reply, or None when it cannot be read unambiguously.

    Accepts a JSON object (possibly inside ```json fences or surrounded by chatter) with a ``score``
    list of numbers (or numeric strings) in [0, 10]; falls back to a literal ``"score": [a, b]`` pattern.
    Anything else — missing, wrong count, out of range, not numbers — is None (retry, then skip).
    """
    if not isinstance(text, str) or not text.strip():
        return None
    cleaned = re.sub(r"```(?:json)?", "", text, flags=re.I)
    candidates: list[Any] = []
    m = _JSON_OBJ.search(cleaned)
    if m:
        try:
            obj = json.loads(m.group(0))
            if isinstance(obj, dict):
                candidates.append(obj.get("score", obj.get("scores")))
        except json.JSONDecodeError:
            pass
    m2 = _SCORE_LIST.search(cleaned)
    if m2:
        candidates.append(m2.group(1).split(","))
    for c in candidates:
        if not isinstance(c, list) or len(c) != n:
            continue
        try:
            vals = [float(v.strip().strip("'\"") if isinstance(v, str) else v) for v in c]
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) and 0.0 <= v <= 10.0 for v in vals):
            return vals
    return None


def png_data_url(img: Image.Image) -> str:
    """A lossless PNG ``data:`` URL, the form OpenAI-compatible servers (vLLM) accept for images."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class EndpointJudge:
    """Asks an OpenAI-compatible ``/chat/completions`` endpoint (e.g. ``vllm serve Qwen/Qwen2.5-VL-72B-Instruct``).

    ``base_url`` is the API root (``http://host:8000/v1``). Plain urllib: no extra dependency.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 max_tokens: int = 400, temperature: float = 0.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_tokens, self.temperature = max_tokens, temperature

    def __call__(self, images: list[Image.Image], prompt: str) -> str:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
        content.append({"type": "text", "text": prompt})
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": JUDGE_CONTEXT}, {"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        return str(data["choices"][0]["message"]["content"] or "")


class LocalJudge:
    """A local transformers VLM (e.g. a Qwen2.5-VL folder) through ``AutoModelForImageTextToText``.

    Loaded from a local folder only (nothing is downloaded). Greedy decoding.
    """

    def __init__(self, path: str | Path, device: str = "cpu", max_new_tokens: int = 400) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"judge model folder not found: {path}")
        self.processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, images: list[Image.Image], prompt: str) -> str:
        import torch

        messages = [
            {"role": "system", "content": [{"type": "text", "text": JUDGE_CONTEXT}]},
            {"role": "user", "content": [*({"type": "image", "image": im.convert("RGB")} for im in images),
                                         {"type": "text", "text": prompt}]},
        ]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


class JudgeReward(Reward):
    """VIEScore with an MLLM judge: overall = sqrt(min(SC scores) · min(PQ scores)), 0–10.

    ``ask(images, prompt) -> reply text`` is an ``EndpointJudge``, a ``LocalJudge`` or any callable.
    Each question is asked up to ``1 + retries`` times until its reply parses; a sample whose reply
    never parses (or whose request keeps failing) is skipped (None). ``what``: "overall", "sc" or "pq".
    """

    name = "judge"

    def __init__(self, ask: Callable[[list[Image.Image], str], str], retries: int = 2, what: str = "overall",
                 retry_wait_s: float = 0.0) -> None:
        super().__init__()
        if what not in ("overall", "sc", "pq"):
            raise ValueError(f"unknown judge score {what!r}")
        self.ask, self.retries, self.what, self.retry_wait_s = ask, retries, what, retry_wait_s
        self.stats.update({"retries": 0, "unparseable": 0, "request_errors": 0})

    @classmethod
    def from_endpoint(cls, base_url: str, model: str, api_key: str | None = None, **kw: Any) -> JudgeReward:
        return cls(EndpointJudge(base_url, model, api_key), **kw)

    @classmethod
    def from_local(cls, path: str | Path, device: str = "cpu", **kw: Any) -> JudgeReward:
        return cls(LocalJudge(path, device), **kw)

    def _ask_scores(self, images: list[Image.Image], prompt: str) -> list[float] | None:
        for attempt in range(1 + self.retries):
            if attempt:
                self.stats["retries"] += 1
                if self.retry_wait_s:
                    time.sleep(self.retry_wait_s)
            try:
                reply = self.ask(images, prompt)
            except (OSError, urllib.error.URLError, KeyError, IndexError, ValueError, TypeError):
                # unreachable server, HTTP error, or a response without choices[0].message.content
                self.stats["request_errors"] += 1
                continue
            vals = parse_judge_reply(reply, 2)
            if vals is not None:
                return vals
            self.stats["unparseable"] += 1
        return None

    def score(self, samples: Sequence[RewardSample]) -> list[float | None]:
        out: list[float | None] = []
        for s in samples:
            if s.output is None:
                out.append(0.0)
                continue
            sc = pq = None
            if self.what in ("overall", "sc"):
                v = self._ask_scores([s.source, s.output], SC_PROMPT.format(instruction=s.instruction))
                sc = min(v) if v is not None else None
            if self.what == "overall" and sc is None:
                out.append(None)  # skipped anyway: don't spend a judge call on PQ
                continue
            if self.what in ("overall", "pq"):
                v = self._ask_scores([s.output], PQ_PROMPT)
                pq = min(v) if v is not None else None
            if self.what == "sc":
                out.append(sc)
            elif self.what == "pq":
                out.append(pq)
            else:
                out.append(None if sc is None or pq is None else float(np.sqrt(sc * pq)))
        return self._count(out)


class RewardModelReward(Reward):
    """A Bradley–Terry reward model trained by ``training.reward_model`` (needs the samples' tokens)."""

    name = "reward_model"

    def __init__(self, path: str | Path, bundle: Any = None) -> None:
        super().__init__()
        from training.reward_model import load_reward_model

        self.model = load_reward_model(path, bundle)

    def score(self, samples: Sequence[RewardSample]) -> list[float | None]:
        return self._count(self.model.score_samples(samples))


def make_reward(spec: str, bundle: Any = None, judge_url: str | None = None, judge_model: str = "judge",
                judge_path: str | None = None, reward_model: str | None = None) -> Reward:
    """A reward from a CLI spec: ``verifier``, ``judge``, ``reward_model`` or a weighted mix such as
    ``verifier:0.5,judge:0.5``; ``verifier.pq`` picks one verifier score (overall, sc, pq, success, overedit, closeness, layout, layout_corr)."""
    parts = []
    for item in spec.split(","):
        name, _, w = item.strip().partition(":")
        weight = float(w) if w else 1.0
        if name == "verifier" or name.startswith("verifier."):
            r: Reward = VerifierReward(name.partition(".")[2] or "overall")
        elif name == "judge":
            if judge_url:
                r = JudgeReward.from_endpoint(judge_url, judge_model)
            elif judge_path:
                r = JudgeReward.from_local(judge_path)
            else:
                raise ValueError("the judge reward needs --judge-url (OpenAI-compatible endpoint) or --judge-path")
        elif name in ("reward_model", "rm"):
            if not reward_model:
                raise ValueError("the reward_model reward needs --reward-model (a folder from training.reward_model)")
            r = RewardModelReward(reward_model, bundle)
        else:
            raise ValueError(f"unknown reward {name!r}; use verifier, judge, reward_model or a mix like verifier:0.5,judge:0.5")
        parts.append((r, weight))
    return parts[0][0] if len(parts) == 1 and parts[0][1] == 1.0 else CombinedReward(parts)
