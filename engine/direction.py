"""Which way an instruction pushes a two-sided edit: warmer or cooler, brighter or darker, more or less.

A sentence encoder places "make it warmer" and "make it less warm" close together, and a linear head over
it cannot count negations, so the reader (``engine.understanding``) names the *axis* of a tonal edit well
and its *direction* less so. This module reads the direction with a few rules of English instead:

- each axis has words that lean one way ("cold", "blue", "icy" lean cooler; "punchy", "harsh" lean more
  contrast) and nouns that only name the axis ("contrast", "saturation", "exposure");
- words before them (up to a short window) or right after them turn the lean: "more", "boost", "add"
  keep it; "less", "reduce", "take … out", "not" flip it; "too" flips it too, since "too cold" asks for
  the opposite, as does a complaint ("it looks flat", "the colours are washed out"); "not enough" asks
  for more;
- a leaning word counts on its own ("icy"); naming nouns decide only when no leaning word does, and only
  with a word that says which way ("lower the contrast").

``direction(text, axis)`` sums the votes: +1 (towards the axis's first pole), -1, or 0 when the words do not
say. The reader keeps its own choice at 0.
"""

from __future__ import annotations

import re

# axis -> (its two edit kinds, first pole first)
AXES: dict[str, tuple[str, str]] = {
    "temperature": ("warmer", "cooler"),
    "brightness": ("brighter", "darker"),
    "contrast": ("more_contrast", "less_contrast"),
    "saturation": ("more_saturation", "less_saturation"),
}
AXIS_OF: dict[str, str] = {k: a for a, ks in AXES.items() for k in ks}

# words that lean towards the first (+1) or the second (-1) pole of an axis
_LEAN: dict[str, dict[str, int]] = {
    "temperature": {
        **dict.fromkeys("warm warmer warmest warmth warmed warming hot orange orangey orangish orangy yellow "
                        "yellower yellowish yellowy amber gold golden sunny sunnier sunlit sunshine summer summery "
                        "cosy cozy cosier cozier sunset sunrise tungsten toasty balmy red reddish".split(), 1),
        **dict.fromkeys("cool cooler coolest cold colder coldest chilly chillier icy ice frosty frozen wintry "
                        "wintery winter blue bluer bluish blueish cyan teal arctic".split(), -1),
    },
    "brightness": {
        **dict.fromkeys("bright brighter brightest brighten brightened light lighter lighten lightened lit "
                        "luminous sunnier overexposed".split(), 1),
        **dict.fromkeys("dark darker darkest darken darkened dim dimmer dimmed gloomy gloomier shadowy moody "
                        "moodier murky underexposed".split(), -1),
    },
    "contrast": {
        **dict.fromkeys("contrasty punchy punchier punch pop pops popping dramatic crisp crisper harsh harsher "
                        "deeper".split(), 1),
        **dict.fromkeys("flat flatter flatten flattened soft softer soften softened faded fade matte gentle "
                        "gentler washed milky".split(), -1),
    },
    "saturation": {
        **dict.fromkeys("vivid vivider vibrant colourful colorful rich richer saturated saturate intense "
                        "intensify juicy juicier bold bolder punchy punchier pop popping loud".split(), 1),
        **dict.fromkeys("muted mute pale paler dull duller washed subdued pastel faded desaturate desaturated "
                        "soft softer".split(), -1),
    },
}
# leaning words of every axis: how much of it
_LEAN_ANY = {**dict.fromkeys("high higher strong stronger".split(), 1), **dict.fromkeys("low weak weaker".split(), -1)}
# nouns that name an axis without leaning
_NAMES: dict[str, set[str]] = {
    "temperature": {"temperature", "tone", "tones", "balance", "tint", "cast"},
    "brightness": {"brightness", "exposure", "lighting"},
    "contrast": {"contrast", "tones", "range"},
    "saturation": {"saturation", "vibrance", "colour", "colours", "color", "colors", "intensity", "chroma"},
}
_MORE = set("more increase increased boost raise raised add adding extra enhance amplify intensify pump crank bump "
            "push deepen higher stronger plenty".split())
_LESS = set("less reduce reduced decrease decreased lower cut remove take drop minus fewer lessen weaken kill strip "
            "lose not no without away off ease back".split())
# "turn down the contrast", "bring up the exposure": a particle before its object
_PARTICLES = {"down": -1, "up": 1}
_DETERMINERS = {"the", "a", "some", "its", "my", "this", "that", "all", "every"}
_TOO = {"too", "overly", "excessively", "over"}
# "it looks flat", "the colours are washed out": a complaint, asking for the opposite
_COPULA = {"is", "are", "was", "looks", "seems", "feels", "appears", "s"}
_AFTER = {"up": 1, "out": -1, "down": -1, "away": -1, "off": -1}
# verbs whose "up"/"down" only intensify them ("cool it down" is cooler, "tone the warmth down" is not)
_VERBS = set("warm cool chill heat brighten lighten light darken soften flatten fade saturate desaturate intensify "
             "mute".split())
_WINDOW = 4
_WORD = re.compile(r"[a-z]+")


def _before(words: list[str], i: int) -> int:
    """How the words just before position ``i`` turn the word there: 1 keeps its lean, -1 flips it, 0 when
    none of them says anything ("too" alone says -1)."""
    sign = 1
    for j in range(i - 1, max(0, i - _WINDOW) - 1, -1):
        w = words[j]
        if w == "enough" and j > 0 and words[j - 1] == "not":
            return 1  # "not enough contrast": more
        if w in _TOO:
            sign = -sign
        elif w in _COPULA:
            return -1
        elif w in _LESS:
            return -sign
        elif w in _MORE:
            return sign
        elif w in _PARTICLES and j + 1 < i and words[j + 1] in _DETERMINERS:
            return _PARTICLES[w] * sign
    return sign if sign < 0 else 0


def _after(words: list[str], i: int) -> int:
    """-1 when "out", "down" … follow within two words ("take the warmth out"), +1 for "up", else 0."""
    for w in words[i + 1 : i + 3]:
        if w in _AFTER and not (words[i] in _VERBS and w in ("up", "down")):
            return _AFTER[w]
    return 0


def direction(text: str, axis: str) -> int:
    """+1 when ``text`` asks for the first pole of ``axis`` (``AXES``), -1 for the second, 0 when unclear."""
    text = text.lower().replace("&", " and ").replace("n't", " not").replace("let's", "let us")
    text = re.sub(r"\bwashed out\b", "washed", text)
    words = _WORD.findall(text)
    lean, names = _LEAN[axis], _NAMES[axis]
    leaning = named = 0
    for i, w in enumerate(words):
        base = lean.get(w, _LEAN_ANY.get(w, 0))
        if base:
            if "enough" in words[i + 1 : i + 3] and "not" in words[max(0, i - _WINDOW) : i]:
                leaning += base  # "not colourful enough": more of it
            else:
                leaning += base * (_after(words, i) or _before(words, i) or 1)
        elif w in names:  # a naming noun counts only when something says which way
            named += _after(words, i) or _before(words, i)
    total = leaning or named  # "add a blueish tint": the leaning word says it; "tint" adds nothing
    return (total > 0) - (total < 0)
