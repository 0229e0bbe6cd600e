"""Rewards: the verifier reward, the MLLM judge over real HTTP (a local OpenAI-compatible server that
returns canned and malformed replies), reply parsing, weighted combination."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.judge_server import JudgeServer
from training.rewards import (
    CombinedReward,
    JudgeReward,
    Reward,
    RewardSample,
    VerifierReward,
    make_reward,
    parse_judge_reply,
)


def _img(v: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, (v, v, v))


def _sample(out_v: int = 128) -> RewardSample:
    return RewardSample(source=_img(50), output=_img(out_v), instruction="make it brighter")


@pytest.mark.parametrize("text,expected", [
    ('{"reasoning": "ok", "score": [7, 9]}', [7.0, 9.0]),
    ('```json\n{"score": [3, 4], "reasoning": "meh"}\n```', [3.0, 4.0]),
    ('Sure! Here it is: {"score": ["8", "6.5"]} hope it helps', [8.0, 6.5]),
    ('{"reasoning": "broken json, "score": [5, 5]', [5.0, 5.0]),  # fallback on the literal pattern
    ("I would rate it a 7.", None),
    ('{"score": [7]}', None),  # wrong count
    ('{"score": [11, 3]}', None),  # out of range
    ('{"score": ["high", "low"]}', None),
    ("", None),
])
def test_parse_judge_reply(text, expected):
    assert parse_judge_reply(text) == expected


def test_verifier_reward_orders_edits():
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    tgt = src.convert("L").convert("RGB")  # "make it grayscale"
    mask = np.ones((32, 32), bool)
    good = RewardSample(src, tgt, "grayscale", target=tgt, mask=mask)
    lazy = RewardSample(src, src, "grayscale", target=tgt, mask=mask)
    failed = RewardSample(src, None, "grayscale", target=tgt, mask=mask)
    no_truth = RewardSample(src, tgt, "grayscale")
    r = VerifierReward()
    scores = r.score([good, lazy, failed, no_truth])
    assert scores[0] > 9 and scores[1] < 3 and scores[2] == 0.0 and scores[3] is None
    assert r.stats == {"scored": 3, "skipped": 1}
    with pytest.raises(ValueError):
        VerifierReward("nonsense")
    dense = VerifierReward("closeness").score([good, lazy, failed, no_truth])
    assert dense[0] == 10.0 and dense[1] == 0.0 and dense[2] == -10.0 and dense[3] is None
    assert VerifierReward("layout").score([good, lazy, failed, no_truth])[2:] == [-10.0, None]


def test_judge_endpoint_scores_and_retries():
    script = [
        "The edit looks great!",  # unparseable -> retried
        '```json\n{"reasoning": "fine", "score": [8, 6]}\n```',  # SC: min = 6
        '{"reasoning": "natural", "score": [9, 4]}',  # PQ: min = 4
    ]
    with JudgeServer(script) as srv:
        judge = JudgeReward.from_endpoint(srv.url, "qwen-vl-test", retries=2)
        (score,) = judge.score([_sample()])
        assert score == pytest.approx(np.sqrt(6 * 4))
        assert judge.stats["retries"] == 1 and judge.stats["unparseable"] == 1
        # the request carried both images as lossless PNG data URLs and our SC prompt
        req = srv.requests[1]
        assert req["model"] == "qwen-vl-test"
        parts = req["messages"][-1]["content"]
        urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
        assert "make it brighter" in parts[-1]["text"]
        assert "JSON" in req["messages"][0]["content"]
        # PQ asks about the output only
        assert sum(p["type"] == "image_url" for p in srv.requests[2]["messages"][-1]["content"]) == 1


def test_judge_skips_after_retries_never_guesses():
    script = ["no idea"] * 3 + ["HTTP500"] + ['{"score": [2, 2]}'] + ['{"score": [10, 10]}']
    with JudgeServer(script) as srv:
        judge = JudgeReward.from_endpoint(srv.url, "m", retries=2)
        a, b = judge.score([_sample(), _sample()])
        assert a is None  # three unparseable replies: skipped, PQ not even asked
        assert b == pytest.approx(np.sqrt(2 * 10))  # one HTTP error, then parsed
        assert judge.stats["skipped"] == 1 and judge.stats["request_errors"] == 1
        assert len(srv.requests) == 6


def test_judge_unreachable_server_is_skipped():
    judge = JudgeReward.from_endpoint("http://127.0.0.1:9/v1", "m", retries=1)
    judge.ask.timeout = 2
    assert judge.score([_sample()]) == [None]
    assert judge.stats["request_errors"] == 2


def test_judge_from_brightness_server_varies():
    with JudgeServer() as srv:
        judge = make_reward("judge", judge_url=srv.url)
        dark, bright = judge.score([_sample(30), _sample(230)])
        assert dark < bright and bright == pytest.approx(230 / 25.5, abs=0.01)


class _Const(Reward):
    def __init__(self, vals):
        super().__init__()
        self.vals = vals

    def score(self, samples):
        return list(self.vals)


def test_combined_reward_weights_and_skips():
    c = CombinedReward([(_Const([1.0, 2.0, None]), 0.5), (_Const([4.0, None, 1.0]), 2.0)])
    assert c.score([None, None, None]) == [0.5 + 8.0, None, None]
    mix = make_reward("verifier:0.25,verifier.pq:0.75")
    assert isinstance(mix, CombinedReward) and [w for _, w in mix.parts] == [0.25, 0.75]
    assert mix.parts[1][0].field == "pq"
    with pytest.raises(ValueError, match="judge-url"):
        make_reward("judge")
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward("vibes")


def test_reply_json_roundtrip_of_server():
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}]}]}
    import base64
    import io

    buf = io.BytesIO()
    _img(255).save(buf, format="PNG")
    body["messages"][0]["content"][0]["image_url"]["url"] += base64.b64encode(buf.getvalue()).decode()
    assert json.loads(JudgeServer.brightness_reply(body))["score"] == [10.0, 10.0]


def _tiny_llava(folder) -> None:
    """A tiny random LLaVA (CLIP vision tower + Llama) with its processor and a chat template, saved to
    ``folder``: a real local transformers VLM for the judge's local path (its replies are gibberish)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["score the image edit json 0 1 2 3 4 5 6 7 8 9 10 {} [] \" : ,"],
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<image>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>", extra_special_tokens=None)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
                "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                             crop_size={"height": 16, "width": 16}),
                          tokenizer=tok, chat_template=template, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vc = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8, projection_dim=16)
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1)
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)  # fixed random weights: the same gibberish every run
        model = LlavaForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)


def test_local_vlm_judge_unparseable_is_skipped(tmp_path):
    _tiny_llava(tmp_path / "vlm")
    judge = JudgeReward.from_local(tmp_path / "vlm", retries=1)
    judge.ask.max_new_tokens = 8
    reply = judge.ask([_img(10)], "score it")
    assert isinstance(reply, str)
    assert judge.score([_sample()]) == [None]  # random weights never produce a valid score: skipped
    assert judge.stats["unparseable"] == 2 and judge.stats["retries"] == 1
    with pytest.raises(ValueError, match="not found"):
        JudgeReward.from_local(tmp_path / "missing")
