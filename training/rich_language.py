"""A richer instruction generator for training: frames × synonyms × modifiers, paraphrase, word dropout, typos.

The suite's templates (``training.data.edits.language``) give each kind about six sentences, so a model trained on
them learns those sentences rather than the language around them. This generator writes an edit the many ways
people ask for it:

- a *core* clause per kind from its verbs, objects and target words ("turn the shot into b&w",
  "strip the colour out of it", "rotate it a quarter turn to the left");
- a *wrapper* for politeness and form ("could you …?", "… please", "pls …", "I'd like you to …"), or a
  descriptive sentence ("I want the picture in monochrome");
- *modifiers* that do not change the edit ("a bit", "for me", "thanks");
- *noise*: British/American spellings, text-speak, dropped articles, and typos (a swapped, dropped, doubled
  or neighbouring-key letter) in about one draw in six.

Compositions join rich clauses with many joiners. Object kinds take the suite's own fields (``Kind.fields``:
"the red circle", "in the top left corner") and reword the positions.

A draw that equals (after ``heldout_phrasings.normalise``) a text of the held-out phrasing set is drawn again,
so training can never show one of them; ``tests/test_heldout_phrasings.py`` checks this on many draws.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from training import heldout_phrasings

IT = ["it", "the photo", "the image", "the picture", "this", "this photo", "this image", "the shot", "the pic",
      "my photo", "the whole image", "everything"]

# kind -> (core clauses; "{it}" is an object word from IT)
CORES: dict[str, list[str]] = {
    "grayscale": [
        "{mk} {it} {bw}", "{cv} {it} to {bwn}", "{cv} {it} into {bwn}", "strip the colour out of {it}",
        "get rid of all the colour", "take away every colour", "remove every bit of colour",
        "desaturate {it} fully", "desaturate {it} all the way", "make {it} colourless",
        "render {it} in {bwn}", "show {it} in shades of gray", "I want {it} {bw}",
        "{it} should be {bw}", "make a {bw} version of {it}", "switch {it} to {bwn}", "no colour at all",
    ],
    "sepia": [
        "{mk} {it} sepia", "add a sepia effect to {it}", "use a sepia filter", "tint {it} sepia",
        "make {it} look like an {old} photograph", "make {it} look {old}", "give {it} an {old} brown tone",
        "age {it} with a sepia tint", "turn {it} into an {old} brown print", "give {it} a vintage brown look",
        "I want {it} to look {old} and brownish", "make {it} brownish like an {old} print", "sepia tone {it}",
    ],
    "invert": [
        "invert {it}", "invert the colours of {it}", "{mk} {it} a negative", "{mk} {it} look like a negative",
        "turn {it} into a photo negative", "reverse the colours of {it}", "flip the colours to their opposites",
        "show {it} as a negative", "give me the negative of {it}", "invert every colour",
        "turn each colour into its opposite", "{it} should look like a negative",
    ],
    "brighter": [
        "{mk} {it} {more} brighter", "brighten {it} {amt}", "lighten {it} {amt}", "increase the brightness {amt}",
        "turn up the brightness", "raise the exposure", "add {amt2} light", "{it} is too dark",
        "{mk} {it} {more} lighter", "make {it} less dark", "boost the brightness", "I want {it} brighter",
        "{it} should be brighter", "more brightness",
    ],
    "darker": [
        "{mk} {it} {more} darker", "darken {it} {amt}", "dim {it} {amt}", "decrease the brightness {amt}",
        "turn down the brightness", "reduce the exposure", "take away {amt2} light", "{it} is too bright",
        "{mk} {it} less bright", "make {it} {more} dimmer", "cut the brightness", "I want {it} darker",
        "{it} should be darker", "less brightness",
    ],
    "more_contrast": [
        "increase the contrast {amt}", "{mk} {it} {more} contrasty", "add contrast {amt}", "boost the contrast",
        "raise the contrast", "give {it} more contrast", "{mk} the contrast higher", "{it} looks flat",
        "make darks darker and lights brighter", "stronger contrast", "more contrast", "pump the contrast",
        "I want more contrast", "{it} needs more contrast", "sharpen the contrast",
    ],
    "less_contrast": [
        "decrease the contrast {amt}", "reduce the contrast {amt}", "lower the contrast", "less contrast",
        "{mk} the contrast softer", "{mk} {it} less contrasty", "flatten the contrast", "{it} looks too harsh",
        "make {it} {more} flatter", "soften {it}", "weaken the contrast", "I want less contrast",
        "{it} needs less contrast", "{mk} {it} look faded", "bring the contrast down",
    ],
    "more_saturation": [
        "increase the saturation {amt}", "{mk} the colours {more} more vivid", "{mk} the colours {more} stronger",
        "boost the colours", "saturate {it} more", "more saturation", "{mk} {it} {more} more colourful",
        "intensify the colours", "{mk} the colours richer", "the colours look dull", "pump up the saturation",
        "I want more vivid colours", "{it} needs more saturation", "raise the saturation",
    ],
    "less_saturation": [
        "decrease the saturation {amt}", "reduce the saturation {amt}", "{mk} the colours {more} more muted",
        "tone down the colours", "desaturate {it} {amt}", "less saturation", "{mk} the colours paler",
        "{mk} {it} {more} less colourful", "the colours are too strong", "dull the colours a little",
        "lower the saturation", "I want softer colours", "{it} needs less saturation", "calm the colours",
    ],
    "warmer": [
        "{mk} {it} {more} warmer", "warm {it} up", "warm up the colours", "add a warm tint",
        "give {it} a warm tone", "add {amt2} warmth", "{mk} the colours warmer", "shift the colours to orange",
        "give {it} an orange cast", "{it} feels too cold", "I want a warmer look", "{it} should feel warmer",
        "make the white balance warmer",
    ],
    "cooler": [
        "{mk} {it} {more} cooler", "cool {it} down", "cool down the colours", "add a cool tint",
        "give {it} a cool tone", "add {amt2} blue", "{mk} the colours cooler", "shift the colours to blue",
        "give {it} a blue cast", "{it} feels too warm", "I want a cooler look", "{it} should feel colder",
        "make the white balance cooler", "{mk} {it} {more} colder",
    ],
    "hflip": [
        "flip {it} horizontally", "mirror {it}", "mirror {it} horizontally", "flip {it} left to right",
        "flip {it} from left to right", "flip {it} left and right", "swap the left and right of {it}",
        "make a mirror image of {it}", "mirror {it} left-to-right", "flip {it} on the vertical axis",
        "reflect {it} horizontally", "do a horizontal flip", "flip {it} side to side",
    ],
    "vflip": [
        "flip {it} vertically", "mirror {it} vertically", "flip {it} top to bottom", "flip {it} upside down",
        "flip {it} from top to bottom", "swap the top and bottom of {it}", "reflect {it} vertically",
        "flip {it} on the horizontal axis", "do a vertical flip", "mirror {it} upside down",
        "flip {it} over vertically",
    ],
    "rotate180": [
        "rotate {it} 180 degrees", "rotate {it} by 180", "turn {it} 180 degrees", "rotate {it} half a turn",
        "turn {it} upside down", "give {it} a half turn", "rotate {it} upside down", "spin {it} 180 degrees",
        "turn {it} around by 180", "do a 180 degree rotation", "rotate {it} 180°",
    ],
    "rotate90": [
        "rotate {it} {deg} {dir}", "turn {it} {deg} {dir}", "rotate {it} {dir}", "turn {it} {dir} by {deg}",
        "rotate {it} {dir} {deg}", "give {it} a quarter turn {dir}", "spin {it} {deg} {dir}",
        "do a {deg} rotation {dir}",
    ],
    "zoom": [
        "zoom in on {where}", "zoom into {where}", "zoom in to {where}", "crop to {where} and enlarge it",
        "crop {where} and scale it up", "enlarge {where}", "magnify {where}", "close up on {where}",
        "show a close-up of {where}", "blow up {where}", "zoom 2x into {where}", "crop in on {where}",
        "give me a close-up of {where}", "zoom to {where}",
    ],
    "add_shape": [
        "add {a_obj} {pos}", "put {a_obj} {pos}", "draw {a_obj} {pos}", "place {a_obj} {pos}",
        "insert {a_obj} {pos}", "{pos} add {a_obj}", "{pos} draw {a_obj}", "paint {a_obj} {pos}",
        "I want {a_obj} {pos}", "there should be {a_obj} {pos}", "stick {a_obj} {pos}",
    ],
    "add_stamp": [
        "add {a_obj} {pos}", "put {a_obj} {pos}", "place {a_obj} {pos}", "paste {a_obj} {pos}",
        "insert {a_obj} {pos}", "{pos} put {a_obj}", "{pos} add {a_obj}", "I want {a_obj} {pos}",
        "there should be {a_obj} {pos}", "stick {a_obj} {pos}",
    ],
    "remove": [
        "remove {obj}", "delete {obj}", "get rid of {obj}", "erase {obj}", "take out {obj}",
        "take {obj} away", "make {obj} go away", "remove {obj} from {it}", "clear away {obj}",
        "I want {it} without {obj}", "{obj} should not be there", "cut {obj} out", "wipe out {obj}",
    ],
    "recolour": [
        "make {obj} {colour}", "change the colour of {obj} to {colour}", "recolour {obj} {colour}",
        "paint {obj} {colour}", "colour {obj} in {colour}", "turn {obj} {colour}", "change {obj} to {colour}",
        "{obj} should be {colour}", "I want {obj} {colour}", "give {obj} a {colour} colour", "dye {obj} {colour}",
    ],
    "move": [
        "move {obj} {pos}", "move {obj} to {posn}", "put {obj} {pos} instead", "shift {obj} to {posn}",
        "shift {obj} {pos}", "drag {obj} to {posn}", "relocate {obj} to {posn}", "{obj} should be {pos}",
        "I want {obj} {pos}", "place {obj} {pos} instead",
    ],
    "resize": [
        "make {obj} {bigger}", "resize {obj} to be {bigger}", "scale {obj} to be {bigger}", "{grow} {obj}",
        "{obj} should be {bigger}", "I want {obj} {bigger}", "make {obj} look {bigger}", "scale {obj} {updown}",
    ],
    "replace": [
        "replace {obj} with {new}", "swap {obj} for {new}", "turn {obj} into {new}", "change {obj} into {new}",
        "exchange {obj} for {new}", "put {new} instead of {obj}", "use {new} instead of {obj}",
        "I want {new} instead of {obj}", "{obj} should become {new}", "switch {obj} to {new}",
    ],
}

CORES_MORE: dict[str, list[str]] = {
    "grayscale": ["drain the colour from {it}", "wash all the colour out of {it}", "{mk} {it} {bw} please", "go {bw}", "I'd like a {bw} version", "kill the colour", "zero saturation", "take the saturation all the way down", "strip {it} down to grey tones", "only greys, no colour", "like a {bw} film photo", "monochrome it", "make {it} look like an old {bw} movie", "desaturate {it} completely", "remove the colour entirely", "lose the colour"],
    "sepia": ["give {it} that {old} sepia look", "brownish {old} tint", "make {it} look like a faded {old} photo", "{mk} {it} look like it was taken a century ago", "warm brown {old} print effect", "make {it} look like a photo from the 1800s", "old-timey brown filter", "antique it", "make it look like grandma's old photos", "give {it} a nostalgic brown tint"],
    "invert": ["negative effect", "{mk} {it} into its negative", "swap every colour for its complement", "invert everything", "reverse all colours and tones", "make dark parts light and light parts dark, colours flipped", "like a film negative", "opposite colours", "colour inversion", "turn {it} inside out colour-wise"],
    "brighter": ["{bump} the brightness", "{bump} the exposure", "lift the exposure {amt}", "more light", "{it} is underexposed", "{it} is too dim", "light {it} up", "open up the shadows and brighten", "give {it} more light", "{it} looks gloomy, brighten it", "expose {it} brighter", "crank the brightness", "up the exposure", "{it} could be lighter"],
    "darker": ["{lower} the brightness", "{lower} the exposure", "{it} is overexposed", "less light", "{it} is too light", "tone {it} down, darker", "make {it} moodier and darker", "pull the exposure down {amt}", "dial the brightness back", "{it} looks washed out from too much light, darken it", "darken everything", "{it} could be darker", "down the exposure", "make {it} a little gloomier"],
    "more_contrast": ["{bump} the contrast", "more punch", "add some punch", "{mk} {it} pop more", "deeper blacks and brighter whites", "make the darks darker and the brights brighter", "{it} looks flat, add contrast", "more difference between light and dark", "crisper tones", "higher contrast", "{mk} {it} more dramatic with contrast", "stretch the tones", "make the shadows deeper and the highlights brighter", "contrast up"],
    "less_contrast": ["{lower} the contrast", "{mk} {it} softer", "less punch", "{mk} {it} look washed out", "{mk} {it} look matte", "a flatter look", "lift the blacks and dim the whites", "less difference between light and dark", "{it} is too contrasty", "lower contrast", "contrast down", "mute the tones", "{mk} the tones gentler", "make it less harsh"],
    "more_saturation": ["{bump} the saturation", "{bump} the colours", "{mk} the colours pop", "{mk} {it} more vibrant", "richer colours", "juicier colours", "more vivid", "the colours are washed out", "{it} looks dull, make the colours stronger", "{bump} the vibrance", "deepen the colours", "more colour intensity", "saturate {it}", "colours up", "punchier colours"],
    "less_saturation": ["{lower} the saturation", "{lower} the colours", "{mk} the colours more subdued", "mute the colours", "wash the colours out {amt}", "less vivid", "{mk} the colours less intense", "desaturate {it} a bit", "{it} is too colourful", "the colours are too loud", "{lower} the vibrance", "softer, muted colours", "less colour", "pastel-ish colours"],
    "warmer": ["{mk} {it} feel {warmw}", "give {it} a {warmw} feel", "a {warmw} look", "{bump} the warmth", "{bump} the colour temperature", "shift the white balance towards {warmc}", "add a {warmc} tint", "more {warmc}", "{it} looks too {coolw}", "{it} looks too blue", "less blue", "tint {it} {warmc}", "push the colours towards {warmc}", "{mk} {it} look like {warmtime}", "raise the temperature"],
    "cooler": ["{mk} {it} feel {coolw}", "give {it} a {coolw} feel", "a {coolw} look", "{lower} the warmth", "{lower} the colour temperature", "shift the white balance towards {coolc}", "add a {coolc} tint", "more {coolc}", "{it} looks too {warmw}", "{it} looks too yellow", "less orange", "tint {it} {coolc}", "push the colours towards {coolc}", "{mk} {it} look like {cooltime}", "lower the temperature", "take the warmth out", "less yellow"],
    "hflip": ["mirror image please", "flip {it} sideways", "flip {it} left-right", "swap left and right", "{mk} the left side the right side", "mirror {it} as in a mirror", "horizontal mirror", "reverse {it} left to right", "flip {it} around the vertical line", "flip {it} horizontally like a selfie", "make {it} face the other way"],
    "vflip": ["flip {it} upside-down like a reflection", "mirror {it} top-bottom", "flip {it} top-to-bottom", "make the top the bottom", "swap the sky and the ground", "vertical mirror", "reflect {it} upside down as in water", "mirror {it} across the horizontal line", "flip {it} over top to bottom", "reverse {it} top to bottom", "flip {it} on its head like a reflection in a lake"],
    "rotate180": ["turn {it} all the way around", "rotate {it} by half a circle", "spin {it} around half a turn", "turn {it} on its head", "rotate {it} two quarter turns", "make {it} upside down by rotating", "180 rotation", "rotate 180", "a half rotation", "turn {it} round 180 degrees"],
    "rotate90": ["{it} is sideways, rotate {it} {dir}", "rotate {it} {dir} a quarter", "turn {it} on its side {dir}", "a quarter turn {dir}", "rotate {dir} by {deg}", "tilt {it} {deg} {dir}", "{deg} {dir}", "spin {it} {dir} by {deg}"],
}
for _k, _v in CORES_MORE.items():
    CORES[_k] = CORES[_k] + _v

WORDS: dict[str, list[str]] = {
    "mk": ["make", "turn", "render", "set"],
    "cv": ["convert", "change", "turn", "switch"],
    "bw": ["black and white", "black-and-white", "grayscale", "greyscale", "monochrome", "gray", "grey", "b&w",
           "black & white", "colourless"],
    "bwn": ["black and white", "grayscale", "greyscale", "monochrome", "shades of grey", "b&w", "gray tones"],
    "old": ["old", "antique", "vintage", "aged", "old-fashioned", "old-time", "historic", "nineteenth-century"],
    "more": ["", "", "a bit", "a little", "slightly", "much", "a lot", "somewhat", "way"],
    "amt": ["", "", "a bit", "a little", "slightly", "a lot", "somewhat", "quite a bit"],
    "amt2": ["some", "more", "a bit of", "a little", "a lot of"],
    "bump": ["increase", "boost", "raise", "bump up", "push up", "crank up", "turn up", "dial up", "amp up", "lift",
             "punch up", "pump up", "up"],
    "lower": ["decrease", "reduce", "lower", "cut", "turn down", "dial down", "tone down", "knock down", "drop",
              "pull down", "bring down", "ease off", "back off"],
    "warmw": ["warm", "warmer", "cosy", "cozy", "sunny", "golden", "summery", "toasty", "sunlit", "balmy"],
    "coolw": ["cool", "cooler", "cold", "colder", "icy", "chilly", "frosty", "wintry", "frozen", "crisp and cold"],
    "warmc": ["orange", "yellow", "amber", "gold", "red-orange", "warm tones", "the warm side", "tungsten"],
    "coolc": ["blue", "cyan", "teal", "bluish", "cold tones", "the cool side", "icy blue", "steel blue"],
    "warmtime": ["sunset", "golden hour", "a summer afternoon", "candlelight", "late afternoon sun"],
    "cooltime": ["winter", "a winter morning", "moonlight", "blue hour", "a cold dawn", "an overcast day"],
    "deg": ["90 degrees", "90°", "90", "ninety degrees", "a quarter turn", "by 90 degrees", "90 deg"],
}
DIR = {"clockwise": ["clockwise", "to the right", "right", "cw", "clock-wise", "in the clockwise direction"],
       "counterclockwise": ["counterclockwise", "counter-clockwise", "anticlockwise", "anti-clockwise",
                            "to the left", "left", "ccw", "the other way round from clockwise"]}
WHERE = {"center": ["the center", "the centre", "the middle", "the central part", "the centre of the picture"],
         "top left": ["the top left", "the top-left", "the upper left", "the top left corner", "the top left quarter"],
         "top right": ["the top right", "the top-right", "the upper right", "the top right corner",
                       "the top right quarter"],
         "bottom left": ["the bottom left", "the bottom-left", "the lower left", "the bottom left corner",
                         "the bottom left quarter"],
         "bottom right": ["the bottom right", "the bottom-right", "the lower right", "the bottom right corner",
                          "the bottom right quarter"]}
# position phrases of the suite (objects.POSITION_PHRASE) and other ways to say them
POS = {"in the top left corner": ["in the top left corner", "at the top left", "in the upper left corner", "top left",
                                  "in the top-left corner", "up in the top left"],
       "at the top": ["at the top", "along the top", "at the top edge", "up top", "near the top"],
       "in the top right corner": ["in the top right corner", "at the top right", "in the upper right corner",
                                   "top right", "in the top-right corner"],
       "on the left": ["on the left", "on the left side", "at the left", "to the left", "on the left-hand side"],
       "in the center": ["in the center", "in the centre", "in the middle", "right in the middle", "at the center"],
       "on the right": ["on the right", "on the right side", "at the right", "to the right",
                        "on the right-hand side"],
       "in the bottom left corner": ["in the bottom left corner", "at the bottom left", "in the lower left corner",
                                     "bottom left", "in the bottom-left corner"],
       "at the bottom": ["at the bottom", "along the bottom", "at the bottom edge", "down at the bottom",
                         "near the bottom"],
       "in the bottom right corner": ["in the bottom right corner", "at the bottom right",
                                      "in the lower right corner", "bottom right", "in the bottom-right corner"]}

WRAP = ["{c}", "{c}", "{c}", "{c}", "please {c}", "{c} please", "{c}, please", "could you {c}?", "can you {c}?",
        "would you {c}?", "could you please {c}?", "can you {c} for me?", "I'd like you to {c}",
        "I want you to {c}", "I need you to {c}", "pls {c}", "{c} pls", "{c} thanks", "{c}, thank you",
        "kindly {c}", "go ahead and {c}", "let's {c}", "hey, {c}", "ok so {c}", "would you mind if you {c}?",
        "{c} if you can", "just {c}", "quickly {c}", "{c} for me", "try to {c}", "help me {c}"]
JOIN = {2: ["{0}, then {1}", "{0} and then {1}", "first {0}, then {1}", "{0}; after that {1}", "{0}, after that {1}",
            "{0}. Then {1}", "{0} and {1}", "{0}, and {1}", "{0} then {1}", "first {0} and then {1}",
            "{0}, followed by {1}", "{0}, and afterwards {1}", "{0}, then also {1}", "{0}; then {1}",
            "start by doing this: {0}, then {1}", "{0} and after that {1}", "{0}. Also {1}", "{0}, also {1}"],
        3: ["{0}, then {1}, then {2}", "first {0}, then {1}, and finally {2}", "{0}, {1}, and then {2}",
            "{0}, {1}, then {2}", "{0}; {1}; then {2}", "{0}, then {1}, and {2}", "{0}. Then {1}. Then {2}",
            "first {0}, next {1}, finally {2}", "{0} and {1} and {2}", "{0}, {1} and finally {2}",
            "{0}, then {1}, and after that {2}", "{0}, after that {1}, then {2}"]}
SPELL = [("colour", "color"), ("grey", "gray"), ("centre", "center"), ("please", "pls"), ("you", "u"),
         ("and", "&"), ("picture", "pic"), ("photo", "pic"), ("degrees", "deg")]
DROP = {"the", "a", "it", "please", "to", "of"}
_KEYS = "qwertyuiop asdfghjkl zxcvbnm"


def _pick(rng: np.random.Generator, xs: list[str]) -> str:
    return xs[int(rng.integers(len(xs)))]


def _fill(core: str, kind: str, fields: dict[str, str], rng: np.random.Generator) -> str:
    f = dict(fields)
    for k, v in WORDS.items():
        f[k] = _pick(rng, v)
    f["it"] = _pick(rng, IT)
    if "dir" in fields:
        f["dir"] = _pick(rng, DIR[fields["dir"]])
    if "where" in fields:
        key = fields["where"].removeprefix("the ")
        f["where"] = _pick(rng, WHERE.get(key, [fields["where"]]))
    if "pos" in fields:
        f["pos"] = _pick(rng, POS.get(fields["pos"], [fields["pos"]]))
    if "bigger" in fields:
        f["updown"] = "up" if fields["bigger"] == "bigger" else "down"
        big = fields["bigger"] == "bigger"
        f["bigger"] = _pick(rng, ["bigger", "larger", "much bigger", "a lot larger"] if big else
                            ["smaller", "tinier", "much smaller", "a lot smaller"])
    out = core.format(**f)
    return re.sub(r"\s+", " ", out).strip()


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = int(rng.integers(1, len(word) - 1))
    op = int(rng.integers(4))
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:
        return word[:i] + word[i + 1:]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    row = next((r for r in _KEYS.split() if word[i] in r), None)
    if row is None:
        return word
    j = row.index(word[i]) + (1 if rng.random() < 0.5 else -1)
    return word[:i] + row[max(0, min(len(row) - 1, j))] + word[i + 1:]


def _noise(text: str, rng: np.random.Generator, protect: tuple[str, ...] = ()) -> str:
    """Spellings, dropped small words and typos; words of ``protect`` (object names, colours) stay intact."""
    for a, b in SPELL:
        if rng.random() < 0.15:
            text = re.sub(rf"\b{a}\b", b, text)
    words = text.split(" ")
    keep = set(" ".join(protect).lower().split())
    out = []
    for w in words:
        bare = w.strip(",.?!;:").lower()
        if bare in DROP and rng.random() < 0.08 and len(words) > 3:
            continue
        if bare not in keep and rng.random() < 0.03:
            w = _typo(w, rng)
        out.append(w)
    return " ".join(out)


def _finish(text: str, rng: np.random.Generator) -> str:
    text = text.strip()
    r = rng.random()
    if r < 0.25:  # typed fast: all lower case, no final stop
        return text.lower().rstrip(".")
    text = text[:1].upper() + text[1:]
    if r < 0.45 or text.endswith(("?", "!", ".")):
        return text
    return text + ("." if r < 0.9 else "!")


@functools.lru_cache(maxsize=1)
def _held() -> frozenset[str]:
    return frozenset(heldout_phrasings.texts())


def _protect(fields: dict[str, str]) -> tuple[str, ...]:
    return tuple(v for k, v in fields.items() if k in ("obj", "a_obj", "new", "colour"))


def clause(kind: str, fields: dict[str, str], rng: np.random.Generator) -> str:
    """One lower-case clause for ``kind`` (usable inside a composition), never a held-out text."""
    for _ in range(50):
        c = _fill(_pick(rng, CORES[kind]), kind, fields, rng)
        if rng.random() < 0.3:
            c = _noise(c, rng, _protect(fields))
        if heldout_phrasings.normalise(c) not in _held():
            return c
    raise RuntimeError(f"no clause for {kind} outside the held-out set")


def phrase(kind: str, fields: dict[str, str], rng: np.random.Generator) -> str:
    """One full instruction for ``kind`` with the suite's ``fields``, never a held-out text."""
    for _ in range(50):
        c = _fill(_pick(rng, CORES[kind]), kind, fields, rng)
        t = _pick(rng, WRAP).format(c=c)
        if rng.random() < 0.35:
            t = _noise(t, rng, _protect(fields))
        t = _finish(t, rng)
        if heldout_phrasings.normalise(t) not in _held():
            return t
    raise RuntimeError(f"no phrasing for {kind} outside the held-out set")


def join(clauses: list[str], rng: np.random.Generator) -> str:
    """A composition instruction from step clauses, never a held-out text."""
    for _ in range(50):
        t = _pick(rng, JOIN[len(clauses)]).format(*clauses)
        t = _finish(_pick(rng, WRAP[:12]).format(c=t), rng)
        if heldout_phrasings.normalise(t) not in _held():
            return t
    raise RuntimeError("no composition phrasing outside the held-out set")


# Two colour edits asked for in one breath, sharing "make it" or a verb ("make it darker and cooler",
# "increase brightness and contrast"): the shortest compositions people type, and the easiest to misread as
# one edit. The kinds' comparative words, and the nouns a verb of more or less takes.
ADJECTIVES = {
    "brighter": ["brighter", "lighter"], "darker": ["darker", "moodier"],
    "more_contrast": ["punchier", "more contrasty", "higher in contrast"], "less_contrast": ["softer", "flatter"],
    "more_saturation": ["more saturated", "more colourful", "more vibrant"],
    "less_saturation": ["less saturated", "more muted"], "warmer": ["warmer", "more golden"],
    "cooler": ["cooler", "colder", "bluer"], "grayscale": ["black and white", "grey"], "sepia": ["sepia"],
}
NOUNS = {"brightness": ("brighter", "darker"), "contrast": ("more_contrast", "less_contrast"),
         "saturation": ("more_saturation", "less_saturation"), "warmth": ("warmer", "cooler")}
MORE_VERBS = ["increase", "boost", "raise", "bump up", "turn up", "add more", "more"]
LESS_VERBS = ["decrease", "reduce", "lower", "turn down", "tone down", "less"]
PAIR_FORMS = ["make it {0} and {1}", "{0} and {1}", "{0} & {1}", "make it a bit {0} and {1}", "a little {0} and {1}",
              "I want it {0} and {1}", "make the photo {0} and {1}", "it should be {0} and {1}"]


def colour_pair(rng: np.random.Generator) -> tuple[str, list[str]]:
    """A two-edit request of two colour edits of different axes sharing a verb (never a held-out text), and
    the kinds it asks for, in order."""
    from engine.direction import AXES

    axis_of = {k: a for a, pair in AXES.items() for k in pair}
    for _ in range(50):
        if rng.random() < 0.35:  # "increase brightness and contrast": one verb, two nouns
            n1, n2 = (str(n) for n in rng.choice(sorted(NOUNS), size=2, replace=False))
            more = bool(rng.random() < 0.6)
            verb = _pick(rng, MORE_VERBS if more else LESS_VERBS)
            kinds = [NOUNS[n][0 if more else 1] for n in (n1, n2)]
            the = "the " if rng.random() < 0.3 else ""
            t = f"{verb} {the}{n1} and {n2}"
        else:
            k1, k2 = (str(k) for k in rng.choice(sorted(ADJECTIVES), size=2, replace=False))
            if axis_of.get(k1, k1) == axis_of.get(k2, k2) or {k1, k2} <= {"grayscale", "sepia"}:
                continue
            kinds = [k1, k2]
            t = _pick(rng, PAIR_FORMS).format(_pick(rng, ADJECTIVES[k1]), _pick(rng, ADJECTIVES[k2]))
        t = _finish(_pick(rng, ["{c}", "{c}", "{c} please", "please {c}", "can you {c}?"]).format(c=t), rng)
        if heldout_phrasings.normalise(t) not in _held():
            return t, kinds
    raise RuntimeError("no colour pair outside the held-out set")


def instruction(kind: str, params: dict, rng: np.random.Generator) -> str:
    """A rich instruction for a suite sample's ``kind`` and ``params`` (compositions included)."""
    from training.data.edits import KINDS

    if kind == "compose":
        return join([clause(s["kind"], KINDS[s["kind"]].fields(s["params"]), rng) for s in params["steps"]], rng)
    return phrase(kind, KINDS[kind].fields(params), rng)
