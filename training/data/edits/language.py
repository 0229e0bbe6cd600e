"""Instruction phrasings and EARL-style reasoning text.

Every kind has imperative clauses (``imp``, lowercase, no final period — also used inside
compositions), descriptive sentences (``desc``) and a held-out set of clauses (``held``) that is never
used for training samples: ``phrase(..., heldout=True)`` draws only from ``held``, training draws only
from ``imp`` + ``desc``. Fields: {obj} "the red circle", {a_obj} "a red circle", {pos} "in the top
left corner", {size} "small", {new} "a duck", {colour} "blue", {dir} "clockwise", {where} "the top left".
"""

from __future__ import annotations

import numpy as np

T: dict[str, dict[str, list[str]]] = {
    "grayscale": {
        "imp": ["make it black and white", "convert the photo to grayscale", "remove all the colour",
                "turn the picture into a black-and-white photo", "make the image grayscale"],
        "desc": ["The photo should be black and white.", "I want this picture in grayscale.",
                 "This image would look better without any colour."],
        "held": ["drain every bit of colour from the shot", "give me a monochrome version of this"],
    },
    "sepia": {
        "imp": ["apply a sepia tone", "make it look like an old sepia photograph", "give the photo a sepia filter",
                "turn it sepia"],
        "desc": ["The picture should have a brownish sepia tone.", "I'd like this to look like an antique sepia print."],
        "held": ["age the image with brown vintage toning", "make this resemble a faded old-time photo in brown"],
    },
    "invert": {
        "imp": ["invert the colours", "make a negative of the photo", "turn the image into its negative",
                "reverse all the colours"],
        "desc": ["The image should look like a photographic negative.", "I want the colours inverted."],
        "held": ["flip every colour to its opposite", "show me the film negative of this picture"],
    },
    "brighter": {
        "imp": ["make it brighter", "brighten the photo", "increase the brightness", "lighten the image"],
        "desc": ["The photo is too dark; it should be brighter.", "I want the picture to be lighter."],
        "held": ["bump up the exposure", "add more light to the whole scene"],
    },
    "darker": {
        "imp": ["make it darker", "darken the photo", "decrease the brightness", "reduce the brightness"],
        "desc": ["The photo is too bright; it should be darker.", "I want the picture to be dimmer."],
        "held": ["lower the exposure", "take some light out of the whole scene"],
    },
    "more_contrast": {
        "imp": ["increase the contrast", "add more contrast", "make the contrast stronger", "boost the contrast"],
        "desc": ["The image looks flat; it needs more contrast.", "I want stronger contrast in this photo."],
        "held": ["make the darks darker and the lights lighter", "punch up the contrast"],
    },
    "less_contrast": {
        "imp": ["reduce the contrast", "lower the contrast", "make the contrast softer", "decrease the contrast"],
        "desc": ["The image is too harsh; it needs less contrast.", "I want a softer, flatter look."],
        "held": ["flatten the tones", "wash out the contrast a bit"],
    },
    "more_saturation": {
        "imp": ["increase the saturation", "make the colours more vivid", "boost the colours",
                "make the colours stronger"],
        "desc": ["The colours look dull; they should be more saturated.", "I want richer, more vivid colours."],
        "held": ["pump up the colour intensity", "make everything more colourful"],
    },
    "less_saturation": {
        "imp": ["reduce the saturation", "make the colours more muted", "tone down the colours",
                "desaturate the photo a little"],
        "desc": ["The colours are too strong; they should be more muted.", "I want softer, paler colours."],
        "held": ["calm the colours down", "make the hues less intense"],
    },
    "warmer": {
        "imp": ["make it warmer", "give the photo a warm tone", "add a warm orange tint", "warm up the colours"],
        "desc": ["The photo feels cold; it should be warmer.", "I want a warmer colour temperature."],
        "held": ["make it feel like golden hour", "shift the white balance towards orange"],
    },
    "cooler": {
        "imp": ["make it cooler", "give the photo a cool tone", "add a cool blue tint", "cool down the colours"],
        "desc": ["The photo feels too warm; it should be cooler.", "I want a colder colour temperature."],
        "held": ["make it feel icy", "shift the white balance towards blue"],
    },
    "hflip": {
        "imp": ["flip it horizontally", "mirror the image", "flip the photo left to right", "mirror it horizontally"],
        "desc": ["The image should be mirrored left to right.", "I want the left and right sides swapped."],
        "held": ["show me the mirror image", "swap left and right"],
    },
    "vflip": {
        "imp": ["flip it vertically", "turn it upside down by flipping", "flip the photo top to bottom",
                "mirror it vertically"],
        "desc": ["The image should be flipped upside down.", "I want the top and bottom swapped."],
        "held": ["reflect it as if in a lake below", "swap top and bottom"],
    },
    "rotate90": {
        "imp": ["rotate it 90 degrees {dir}", "turn the photo 90 degrees {dir}", "rotate the image a quarter turn {dir}"],
        "desc": ["The image should be rotated 90 degrees {dir}.", "I want the picture turned a quarter turn {dir}."],
        "held": ["give it a quarter turn {dir}", "spin the picture 90° {dir}"],
    },
    "rotate180": {
        "imp": ["rotate it 180 degrees", "turn the photo upside down", "rotate the image half a turn"],
        "desc": ["The image should be rotated by 180 degrees.", "I want the picture turned upside down."],
        "held": ["spin it around by half a turn", "give it a 180° turn"],
    },
    "zoom": {
        "imp": ["zoom in on {where}", "crop to {where} and enlarge it", "zoom in 2x on {where}",
                "crop the image to {where}"],
        "desc": ["I want a close-up of {where}.", "The picture should show only {where}, enlarged."],
        "held": ["blow up {where} to fill the frame", "magnify {where} twofold"],
    },
    "add_shape": {
        "imp": ["add {a_obj} {pos}", "put {a_obj} {pos}", "draw {a_obj} {pos}", "place {a_obj} {pos}"],
        "desc": ["There should be {a_obj} {pos}.", "I want {a_obj} {pos}."],
        "held": ["stick {a_obj} {pos}", "insert {a_obj} {pos}"],
    },
    "add_stamp": {
        "imp": ["add {a_obj} {pos}", "put {a_obj} {pos}", "place {a_obj} {pos}", "paste {a_obj} {pos}"],
        "desc": ["There should be {a_obj} {pos}.", "I want {a_obj} {pos}."],
        "held": ["stick {a_obj} {pos}", "insert {a_obj} {pos}"],
    },
    "remove": {
        "imp": ["remove {obj}", "delete {obj}", "get rid of {obj}", "erase {obj}", "take out {obj}"],
        "desc": ["{Obj} should not be there.", "I want the photo without {obj}."],
        "held": ["make {obj} disappear", "wipe {obj} out of the picture"],
    },
    "recolour": {
        "imp": ["make {obj} {colour}", "change the colour of {obj} to {colour}", "recolour {obj} {colour}",
                "paint {obj} {colour}"],
        "desc": ["{Obj} should be {colour}.", "I want {obj} to be {colour} instead."],
        "held": ["turn {obj} {colour}", "switch {obj} over to {colour}"],
    },
    "move": {
        "imp": ["move {obj} to {posn}", "put {obj} {pos} instead", "shift {obj} over to {posn}",
                "move {obj} so it sits {pos}"],
        "desc": ["{Obj} should be {pos}.", "I want {obj} moved to {posn}."],
        "held": ["relocate {obj} to {posn}", "drag {obj} across to {posn}"],
    },
    "resize": {
        "imp": ["make {obj} {bigger}", "resize {obj} to be {bigger}", "scale {obj} to make it {bigger}"],
        "desc": ["{Obj} should be {bigger}.", "I want {obj} to look {bigger}."],
        "held": ["{grow} {obj}", "change {obj} so it is {bigger}"],
    },
    "replace": {
        "imp": ["replace {obj} with {new}", "swap {obj} for {new}", "turn {obj} into {new}",
                "change {obj} into {new}"],
        "desc": ["There should be {new} where {obj} is.", "I want {new} instead of {obj}."],
        "held": ["exchange {obj} for {new}", "substitute {new} for {obj}"],
    },
}

COMPOSE_JOIN = {
    2: ["{0}, then {1}", "{0} and then {1}", "first {0}, then {1}", "{0}; after that {1}"],
    3: ["{0}, then {1}, then {2}", "first {0}, then {1}, and finally {2}", "{0}, {1}, and then {2}"],
}
COMPOSE_JOIN_HELD = {
    2: ["begin with this: {0}; once that is done, {1}", "{0}, followed by: {1}"],
    3: ["{0}; next {1}; lastly {2}", "{0}, followed by: {1}, and to finish {2}"],
}


def _fmt(t: str, fields: dict[str, str]) -> str:
    f = dict(fields)
    if "obj" in f:
        f["Obj"] = f["obj"][:1].upper() + f["obj"][1:]
    return t.format(**f)


def _sentence(s: str) -> str:
    s = s.strip()
    s = s[:1].upper() + s[1:]
    return s if s.endswith((".", "!", "?")) else s + "."


def clause(kind: str, fields: dict[str, str], rng: np.random.Generator, heldout: bool = False) -> str:
    pool = T[kind]["held" if heldout else "imp"]
    return _fmt(pool[int(rng.integers(len(pool)))], fields)


def phrase(kind: str, fields: dict[str, str], rng: np.random.Generator, heldout: bool = False) -> str:
    """One instruction sentence. Training phrasings mix imperative and descriptive forms."""
    if heldout:
        return _sentence(clause(kind, fields, rng, heldout=True))
    pool = T[kind]["imp"] + T[kind]["desc"]
    return _sentence(_fmt(pool[int(rng.integers(len(pool)))], fields))


def join(clauses: list[str], rng: np.random.Generator, heldout: bool = False) -> str:
    pool = (COMPOSE_JOIN_HELD if heldout else COMPOSE_JOIN)[len(clauses)]
    return _sentence(pool[int(rng.integers(len(pool)))].format(*clauses))


def box_text(box: tuple[int, int, int, int], grid: tuple[int, int]) -> str:
    """Token-grid box [x0,y0,x1,y1] (inclusive cell indices) on a cols×rows grid."""
    return f"box [{box[0]},{box[1]},{box[2]},{box[3]}] of the {grid[0]}x{grid[1]} grid"


def reasoning(change: str, where: str, keep: str) -> str:
    """EARL-style short reasoning: what to change, where, what must stay."""
    return f"Change: {change}. Where: {where}. Keep: {keep}."
