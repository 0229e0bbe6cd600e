"""Edit kinds: small programs with exact ground truth.

Each kind has ``sample(photo, rng) -> params`` and ``render(photo, params) -> EditResult``; ``apply``
does both. ``render`` is a pure function of (photo, params), so the ground truth is exact and a sample
is reproducible from its params. Object kinds build their *source* from the photo too (a scene with the
object in it), so ``EditResult.source`` is not always the bare photo.

``wrongs(params, rng)`` gives plausible wrong edits (wrong colour / position / direction / object,
or an incomplete composition) with the same source, used by the verifier's sanity table and tests.
The region mask is pixel-sized but aligned to the 8-px token cells: a cell is in the mask when any of
its pixels changes by the edit (global and geometric edits: the whole image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import language as L
from . import objects as O
from . import ops

CELL = 8  # pixels per token (the VQ's spatial factor)


@dataclass
class EditResult:
    kind: str
    source: Image.Image
    target: Image.Image
    mask: np.ndarray          # bool, the target's (H, W): the region the edit may change
    params: dict
    extra: dict = field(default_factory=dict)   # e.g. per-step masks


def mask_cells(mask: np.ndarray, cell: int = CELL) -> np.ndarray:
    """(ceil(H / cell), ceil(W / cell)) bool: the token cells of a pixel mask that hold a True pixel."""
    H, W = mask.shape
    gh, gw = -(-H // cell), -(-W // cell)
    pad = np.zeros((gh * cell, gw * cell), bool)
    pad[:H, :W] = mask
    return pad.reshape(gh, cell, gw, cell).any(axis=(1, 3))


def cell_mask(changed: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Expand a pixel mask to whole token cells."""
    H, W = changed.shape
    return np.repeat(np.repeat(mask_cells(changed, cell), cell, 0), cell, 1)[:H, :W]


def changed_pixels(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Exact region of an edit: pixels whose stored 8-bit value differs."""
    return (np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB"))).any(axis=2)


def mask_box(mask: np.ndarray, cell: int = CELL) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()) // cell, int(ys.min()) // cell, int(xs.max()) // cell, int(ys.max()) // cell)


def grid_of(img: Image.Image, cell: int = CELL) -> tuple[int, int]:
    return (img.size[0] // cell, img.size[1] // cell)


class Kind:
    name: str = ""
    category: str = ""

    def sample(self, photo: Image.Image, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def render(self, photo: Image.Image, params: dict) -> EditResult:
        raise NotImplementedError

    def wrongs(self, params: dict, rng: np.random.Generator) -> list[tuple[str, dict]]:
        raise NotImplementedError

    def fields(self, params: dict) -> dict[str, str]:
        return {}

    def apply(self, photo: Image.Image, rng: np.random.Generator) -> EditResult:
        return self.render(photo, self.sample(photo, rng))

    def instruction(self, params: dict, rng: np.random.Generator, heldout: bool = False) -> str:
        return L.phrase(self.name, self.fields(params), rng, heldout)

    def clause(self, params: dict, rng: np.random.Generator, heldout: bool = False) -> str:
        return L.clause(self.name, self.fields(params), rng, heldout)

    def reasoning(self, res: EditResult) -> str:
        raise NotImplementedError

    def change_text(self, params: dict) -> str:
        """Short description of what the edit changes (used in reasoning texts)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- global


class GlobalKind(Kind):
    category = "global"

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray], change: str, keep: str, wrong: str):
        self.name, self.fn, self.change, self.keep, self.wrong = name, fn, change, keep, wrong

    def sample(self, photo, rng):
        return {}

    def render(self, photo, params):
        a = ops.to_array(photo)
        t = self.fn(a)
        return EditResult(self.name, photo, ops.to_image(t), np.ones(a.shape[:2], bool), dict(params))

    def wrongs(self, params, rng):
        return [(f"wrong: {self.wrong}", {"_as": self.wrong})]

    def change_text(self, params):
        return self.change

    def reasoning(self, res):
        g = grid_of(res.source)
        return L.reasoning(self.change, f"the whole image, {L.box_text((0, 0, g[0] - 1, g[1] - 1), g)}", self.keep)


GLOBAL_KINDS = [
    GlobalKind("grayscale", ops.grayscale, "replace every colour by its gray level", "the layout, shapes and light", "sepia"),
    GlobalKind("sepia", ops.sepia, "tone every pixel brown like an old print", "the layout, shapes and light", "grayscale"),
    GlobalKind("invert", ops.invert, "turn every colour into its opposite", "the layout and all shapes", "less_contrast"),
    GlobalKind("brighter", lambda a: ops.brightness(a, 1.4), "raise the brightness of every pixel", "colours, layout and content", "darker"),
    GlobalKind("darker", lambda a: ops.brightness(a, 0.6), "lower the brightness of every pixel", "colours, layout and content", "brighter"),
    GlobalKind("more_contrast", lambda a: ops.contrast(a, 1.7), "push darks darker and lights lighter", "colours, layout and content", "less_contrast"),
    GlobalKind("less_contrast", lambda a: ops.contrast(a, 0.5), "pull all tones towards the mean", "colours, layout and content", "more_contrast"),
    GlobalKind("more_saturation", lambda a: ops.saturation(a, 2.0), "make every colour more vivid", "brightness, layout and content", "less_saturation"),
    GlobalKind("less_saturation", lambda a: ops.saturation(a, 0.35), "make every colour paler", "brightness, layout and content", "more_saturation"),
    GlobalKind("warmer", lambda a: ops.temperature(a, 0.15), "shift all colours towards orange", "layout, content and contrast", "cooler"),
    GlobalKind("cooler", lambda a: ops.temperature(a, -0.15), "shift all colours towards blue", "layout, content and contrast", "warmer"),
]
_GLOBAL_FN = {k.name: k.fn for k in GLOBAL_KINDS}


def _render_global_as(photo: Image.Image, kind: str, name: str) -> EditResult:
    a = ops.to_array(photo)
    return EditResult(kind, photo, ops.to_image(_GLOBAL_FN[name](a)), np.ones(a.shape[:2], bool), {"_as": name})


# ----------------------------------------------------------------------------- geometry


# window centres for a 2x zoom: the centre or one of the four quadrants
ZOOM_CENTRES = {"center": (0.5, 0.5), "top left": (0.25, 0.25), "top right": (0.75, 0.25),
                "bottom left": (0.25, 0.75), "bottom right": (0.75, 0.75)}


class Geometry(Kind):
    category = "geometry"

    def __init__(self, name: str, change: str):
        self.name, self.change = name, change

    def sample(self, photo, rng):
        if self.name == "rotate90":
            return {"dir": "clockwise" if rng.random() < 0.5 else "counterclockwise"}
        if self.name == "zoom":
            where = ["center", "top left", "top right", "bottom left", "bottom right"][int(rng.integers(5))]
            return {"where": where, "factor": 2.0}
        return {}

    def _fn(self, params: dict) -> Callable[[np.ndarray], np.ndarray]:
        n = params.get("_as", self.name)
        if n == "hflip":
            return ops.hflip
        if n == "vflip":
            return ops.vflip
        if n == "rotate180":
            return lambda a: ops.rotate(a, 180)
        if n == "rotate90":
            return lambda a: ops.rotate(a, 90 if params["dir"] == "clockwise" else 270)
        if n == "zoom":
            cx, cy = ZOOM_CENTRES[params["where"]]
            return lambda a: ops.zoom(a, params["factor"], cx, cy)
        raise ValueError(n)

    def render(self, photo, params):
        t = self._fn(params)(ops.to_array(photo))
        # the whole target is the edit region (a quarter turn of a non-square photo transposes its shape)
        return EditResult(self.name, photo, ops.to_image(t), np.ones(t.shape[:2], bool), dict(params))

    def fields(self, params):
        f = {}
        if "dir" in params:
            f["dir"] = params["dir"]
        if "where" in params:
            f["where"] = "the center" if params["where"] == "center" else f"the {params['where']}"
        return f

    def wrongs(self, params, rng):
        if self.name == "hflip":
            return [("wrong direction: vflip", {"_as": "vflip"})]
        if self.name == "vflip":
            return [("wrong direction: hflip", {"_as": "hflip"})]
        if self.name == "rotate180":
            return [("wrong: hflip", {"_as": "hflip"})]
        if self.name == "rotate90":
            other = "counterclockwise" if params["dir"] == "clockwise" else "clockwise"
            return [("wrong direction", {**params, "dir": other})]
        opp = {"center": "top left", "top left": "bottom right", "bottom right": "top left",
               "top right": "bottom left", "bottom left": "top right"}
        return [("wrong position", {**params, "where": opp[params["where"]]})]

    def change_text(self, params):
        return self.change.format(**self.fields(params))

    def reasoning(self, res):
        g = grid_of(res.source)
        change = self.change_text(res.params)
        keep = "the content, only its position changes" if self.name != "zoom" else "the look of the region, enlarged"
        return L.reasoning(change, f"the whole image, {L.box_text((0, 0, g[0] - 1, g[1] - 1), g)}", keep)


GEOMETRY_KINDS = [
    Geometry("hflip", "mirror the image left to right"),
    Geometry("vflip", "mirror the image top to bottom"),
    Geometry("rotate90", "rotate the image 90 degrees {dir}"),
    Geometry("rotate180", "rotate the image by 180 degrees"),
    Geometry("zoom", "crop to {where} and scale it up 2x"),
]


# ----------------------------------------------------------------------------- objects


def obj_label(spec: dict) -> str:
    return f"{spec['colour']} {spec['shape']}" if spec["type"] == "shape" else spec["name"]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def a_label(spec: dict) -> str:
    lab = obj_label(spec)
    return f"{_article(lab)} {lab}"


def sprite(spec: dict, size_px: int) -> np.ndarray:
    if spec["type"] == "shape":
        return O.shape_sprite(spec["shape"], spec["colour"], size_px)
    st = {s.name: s for s in O.load_stamps()}.get(spec["name"])
    if st is None:
        raise ValueError(f"stamp {spec['name']!r} not available")
    return O.stamp_sprite(st, size_px)


def random_shape(rng: np.random.Generator, avoid: dict | None = None) -> dict:
    while True:
        s = {"type": "shape", "shape": O.SHAPES[int(rng.integers(len(O.SHAPES)))],
             "colour": list(O.COLOURS)[int(rng.integers(len(O.COLOURS)))]}
        if avoid is None or obj_label(s) != obj_label(avoid):
            return s


def random_stamp(rng: np.random.Generator, avoid: tuple[str, ...] = ()) -> dict:
    names = [s.name for s in O.load_stamps() if s.name not in avoid]
    if not names:
        raise RuntimeError("no Tux Paint stamps found (assets/stamps is missing)")
    return {"type": "stamp", "name": names[int(rng.integers(len(names)))]}


def random_object(rng: np.random.Generator) -> dict:
    return random_shape(rng) if rng.random() < 0.5 else random_stamp(rng)


def placed(spec: dict, size: str, pos: str, W: int, H: int, rng: np.random.Generator | None = None) -> dict:
    jit = (0.0, 0.0) if rng is None else (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)))
    return {"obj": spec, "size": size, "pos": pos, "jitter": jit}


def _draw(a: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    H, W = a.shape[:2]
    px = O.object_size_px(p["size"], W, H)
    sp = sprite(p["obj"], px)
    x, y = O.place(px, p["pos"], W, H, tuple(p["jitter"]), (sp.shape[1], sp.shape[0]))
    out, alpha = O.composite(a, sp, x, y)
    return out, alpha, (x, y, x + sp.shape[1], y + sp.shape[0])


def draw_scene(photo: Image.Image, objs: list[dict]) -> tuple[np.ndarray, list[np.ndarray]]:
    a = ops.to_array(photo)
    alphas = []
    for p in objs:
        a, al, _ = _draw(a, p)
        alphas.append(al)
    return a, alphas


def _boxes_overlap(b1, b2, margin: int = 4) -> bool:
    return not (b1[2] + margin <= b2[0] or b2[2] + margin <= b1[0] or b1[3] + margin <= b2[1] or b2[3] + margin <= b1[1])


def _box_of(photo: Image.Image, p: dict) -> tuple[int, int, int, int]:
    W, H = photo.size
    px = O.object_size_px(p["size"], W, H)
    sp = sprite(p["obj"], px)
    x, y = O.place(px, p["pos"], W, H, tuple(p["jitter"]), (sp.shape[1], sp.shape[0]))
    return (x, y, x + sp.shape[1], y + sp.shape[0])


def pick_free_pos(photo: Image.Image, spec: dict, size: str, taken: list[dict], rng: np.random.Generator,
                  exclude: tuple[str, ...] = ()) -> dict:
    """A placement that overlaps none of ``taken`` (positions in random order)."""
    W, H = photo.size
    order = [list(O.POSITIONS)[i] for i in rng.permutation(len(O.POSITIONS))]
    for pos in order:
        if pos in exclude:
            continue
        p = placed(spec, size, pos, W, H, rng)
        b = _box_of(photo, p)
        if all(not _boxes_overlap(b, _box_of(photo, t)) for t in taken):
            return p
    raise RuntimeError("no free position")


def _where(photo: Image.Image, mask: np.ndarray) -> str:
    return L.box_text(mask_box(mask), grid_of(photo))


class ObjectKind(Kind):
    category = "object"

    def _distractor(self, photo, main: list[dict], rng, p: float = 0.5) -> list[dict]:
        if rng.random() >= p:
            return []
        labels = {obj_label(m["obj"]) for m in main}
        for _ in range(10):
            spec = random_object(rng)
            if obj_label(spec) not in labels:
                break
        try:
            return [pick_free_pos(photo, spec, "small", main, rng)]
        except RuntimeError:
            return []

    def _keep(self, params: dict) -> str:
        d = params.get("distractors") or []
        if d:
            return f"the {obj_label(d[0]['obj'])} and the rest of the photo"
        return "everything else in the photo"


class AddObject(ObjectKind):
    def __init__(self, name: str, stamps: bool):
        self.name, self.stamps = name, stamps

    def sample(self, photo, rng):
        W, H = photo.size
        spec = random_stamp(rng) if self.stamps else random_shape(rng)
        size = list(O.SIZES)[int(rng.integers(len(O.SIZES)))]
        pos = list(O.POSITIONS)[int(rng.integers(len(O.POSITIONS)))]
        return {"add": placed(spec, size, pos, W, H, rng)}

    def render(self, photo, params):
        a = ops.to_array(photo)
        t, _, _ = _draw(a, params["add"])
        tgt = ops.to_image(t)
        return EditResult(self.name, photo, tgt, cell_mask(changed_pixels(photo, tgt)), params,
                          {"visibility": [(photo, tgt)]})

    def fields(self, params):
        p = params["add"]
        return {"a_obj": f"{_article(p['size'])} {p['size']} {obj_label(p['obj'])}", "pos": O.POSITION_PHRASE[p["pos"]]}

    def wrongs(self, params, rng):
        p = params["add"]
        out = []
        if p["obj"]["type"] == "shape":
            spec = dict(p["obj"])
            spec["colour"] = "blue" if spec["colour"] not in ("blue", "cyan", "purple") else "yellow"
            out.append(("wrong colour", {"add": {**p, "obj": spec}}))
        far = {"top left": "bottom right", "top": "bottom", "top right": "bottom left", "left": "right",
               "center": "top left", "right": "left", "bottom left": "top right", "bottom": "top",
               "bottom right": "top left"}
        out.append(("wrong position", {"add": {**p, "pos": far[p["pos"]]}}))
        return out

    def change_text(self, params):
        f = self.fields(params)
        return f"add {f['a_obj']} {f['pos']}"

    def reasoning(self, res):
        f = self.fields(res.params)
        return L.reasoning(f"add {f['a_obj']} {f['pos']}", _where(res.source, res.mask), "everything outside the box unchanged")


class SceneEdit(ObjectKind):
    """Edits of an object already in the photo: the source scene is photo + objects."""

    def __init__(self, name: str):
        self.name = name

    def sample(self, photo, rng):
        W, H = photo.size
        n = self.name
        spec = random_shape(rng) if n == "recolour" else random_object(rng)
        size = "medium" if n == "resize" else list(O.SIZES)[int(rng.integers(len(O.SIZES)))]
        if n == "move":  # a large object has no free spot to move to in a small photo
            size = "small" if rng.random() < 0.5 else "medium"
        pos = list(O.POSITIONS)[int(rng.integers(len(O.POSITIONS)))]
        if n == "resize":
            pos = ["center", "left", "right", "top", "bottom"][int(rng.integers(5))]
        main = placed(spec, size, pos, W, H, rng)
        params: dict = {"main": main}
        if n == "recolour":
            others = [c for c in O.COLOURS if c != spec["colour"]]
            params["colour"] = others[int(rng.integers(len(others)))]
        elif n == "move":
            try:
                params["to"] = pick_free_pos(photo, spec, size, [main], rng)["pos"]
            except RuntimeError:  # crowded small crop: use a small object, then any other spot
                size = "small"
                main = params["main"] = placed(spec, size, pos, W, H, rng)
                try:
                    params["to"] = pick_free_pos(photo, spec, size, [main], rng)["pos"]
                except RuntimeError:
                    params["to"] = next(p for p in O.POSITIONS if p != pos and p != "center")
        elif n == "resize":
            params["to_size"] = "large" if rng.random() < 0.5 else "small"
        elif n == "replace":
            new = random_shape(rng, avoid=spec) if spec["type"] == "shape" and rng.random() < 0.5 else \
                random_stamp(rng, avoid=(spec.get("name", ""),))
            params["new"] = new
        taken = [main]
        if n == "move":
            taken.append({**main, "pos": params["to"]})
        if n == "resize":
            taken.append({**main, "size": "large"})
        params["distractors"] = self._distractor(photo, taken, rng, p=1.0 if n == "remove" else 0.5)
        return params

    def _after(self, params: dict) -> list[dict]:
        """Objects in the target scene."""
        m, n = params["main"], params.get("_as", self.name)
        d = params["distractors"]
        if n == "remove":
            return d
        if n == "remove_distractor":
            return [m]
        if n == "recolour":
            return d + [{**m, "obj": {**m["obj"], "colour": params["colour"]}}]
        if n == "move":
            return d + [{**m, "pos": params["to"]}]
        if n == "resize":
            return d + [{**m, "size": params["to_size"]}]
        if n == "replace":
            return d + [{**m, "obj": params["new"]}]
        raise ValueError(n)

    def render(self, photo, params):
        before = params["distractors"] + [params["main"]]
        src, _ = draw_scene(photo, before)
        tgt, _ = draw_scene(photo, self._after(params))
        s_img, t_img = ops.to_image(src), ops.to_image(tgt)
        # the main object against the bare background, before and after: each must stand out
        bare = ops.to_image(draw_scene(photo, params["distractors"])[0])
        return EditResult(self.name, s_img, t_img, cell_mask(changed_pixels(s_img, t_img)), params,
                          {"visibility": [(bare, s_img), (bare, t_img)]})

    def fields(self, params):
        m = params["main"]
        f = {"obj": f"the {obj_label(m['obj'])}"}
        if "colour" in params:
            f["colour"] = params["colour"]
        if "to" in params:
            f["pos"] = O.POSITION_PHRASE[params["to"]]
            f["posn"] = O.POSITION_NOUN[params["to"]]
        if "to_size" in params:
            big = params["to_size"] == "large"
            f["bigger"] = "bigger" if big else "smaller"
            f["grow"] = "enlarge" if big else "shrink"
        if "new" in params:
            f["new"] = a_label(params["new"])
        return f

    def wrongs(self, params, rng):
        n = self.name
        if n == "remove":
            return [("removed the wrong object", {**params, "_as": "remove_distractor"})]
        if n == "recolour":
            right = np.array(O.COLOURS[params["colour"]], float)
            cands = [c for c in O.COLOURS if c not in (params["colour"], params["main"]["obj"]["colour"])]
            c = max(cands, key=lambda c: float(np.abs(np.array(O.COLOURS[c], float) - right).sum()))
            return [("wrong colour", {**params, "colour": c})]
        if n == "move":
            # the position farthest from the right one (and from where the object started)
            tx, ty = O.POSITIONS[params["to"]]
            fx, fy = O.POSITIONS[params["main"]["pos"]]
            busy = {params["main"]["pos"], params["to"]} | {d["pos"] for d in params["distractors"]}
            cands = [p for p in O.POSITIONS if p not in busy]
            other = max(cands, key=lambda p: min(np.hypot(O.POSITIONS[p][0] - tx, O.POSITIONS[p][1] - ty),
                                                 1.5 * np.hypot(O.POSITIONS[p][0] - fx, O.POSITIONS[p][1] - fy)))
            return [("wrong position", {**params, "to": other})]
        if n == "resize":
            return [("wrong direction", {**params, "to_size": "small" if params["to_size"] == "large" else "large"})]
        if n == "replace":
            cur = (params["new"].get("name", ""), params["main"]["obj"].get("name", ""))
            return [("wrong object", {**params, "new": random_stamp(rng, avoid=cur)})]
        raise ValueError(n)

    def reasoning(self, res):
        p, f = res.params, self.fields(res.params)
        n = self.name
        m = p["main"]
        change = {
            "remove": f"remove {f['obj']} and fill in the background behind it",
            "recolour": f"repaint {f['obj']} {p.get('colour')}, same shape and place",
            "move": f"move {f['obj']} from {O.POSITION_NOUN[m['pos']]} to "
                    f"{O.POSITION_NOUN[p.get('to', m['pos'])]}, fill in the old spot",
            "resize": f"make {f['obj']} {f.get('bigger')} around the same centre",
            "replace": f"put {f.get('new')} where {f['obj']} is, same size",
        }[n]
        return L.reasoning(change, _where(res.source, res.mask), self._keep(p))


OBJECT_KINDS: list[Kind] = [AddObject("add_shape", False), AddObject("add_stamp", True)] + \
    [SceneEdit(n) for n in ("remove", "recolour", "move", "resize", "replace")]


# ----------------------------------------------------------------------------- compositions

FAMILIES = {
    "colour": ["grayscale", "sepia", "more_saturation", "less_saturation", "warmer", "cooler"],
    "tone": ["brighter", "darker", "more_contrast", "less_contrast"],
    "invert": ["invert"],
    "geometry": ["hflip", "vflip", "rotate180"],
    "object": ["add_shape", "add_stamp"],
}


class Compose(Kind):
    name = "compose"
    category = "compose"

    def sample(self, photo, rng):
        n = 2 if rng.random() < 0.6 else 3
        fams = [list(FAMILIES)[i] for i in rng.permutation(len(FAMILIES))[:n]]
        steps = []
        for fam in fams:
            k = FAMILIES[fam][int(rng.integers(len(FAMILIES[fam])))]
            steps.append({"kind": k, "params": KINDS[k].sample(photo, rng)})
        return {"steps": steps}

    def render(self, photo, params):
        cur = photo
        mask = None
        masks = []
        steps = params["steps"][: params.get("_n", len(params["steps"]))]
        for st in steps:
            r = KINDS[st["kind"]].render(cur, st["params"])
            cur = r.target
            masks.append(r.mask)
            mask = r.mask if mask is None else (mask | r.mask)
        return EditResult(self.name, photo, cur, mask, params, {"step_masks": masks})

    def instruction(self, params, rng, heldout=False):
        cl = [KINDS[s["kind"]].clause(s["params"], rng, heldout) for s in params["steps"]]
        return L.join(cl, rng, heldout)

    def clause(self, params, rng, heldout=False):
        raise ValueError("compositions do not nest")

    def wrongs(self, params, rng):
        return [("incomplete: first step only", {**params, "_n": 1})]

    def reasoning(self, res):
        parts = []
        for i, s in enumerate(res.params["steps"], 1):
            k = KINDS[s["kind"]]
            parts.append(f"{i}) {k.change_text(s['params'])}")
        return L.reasoning("; ".join(parts), _where(res.source, res.mask), "everything the steps do not touch")


KINDS: dict[str, Kind] = {k.name: k for k in GLOBAL_KINDS + GEOMETRY_KINDS + OBJECT_KINDS}
KINDS["compose"] = Compose()


def render_wrong(kind: str, photo: Image.Image, params: dict) -> EditResult:
    """Render a wrong variant produced by ``Kind.wrongs`` (global ones may name another mapping)."""
    k = KINDS[kind]
    if isinstance(k, GlobalKind):
        return _render_global_as(photo, kind, params["_as"])
    return k.render(photo, params)
