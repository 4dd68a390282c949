"""Synthetic regional-captioning scenes: deterministic images, entity masks and template references.

Each square image holds 3-6 flat entities (a category, colour, texture, size, shape aspect and place)
drawn in order over a pale background, so later entities occlude earlier ones; an entity's mask is its
visible pixels. The references imitate CompositionCap (Hua et al., CVPR 2025): attribute-aware captions
(AARC) under CompositionCap's attribute names ("category name", "color", "materials/texture", "shape",
"relative location with other objects", "one-sentence description"), a regional dense paragraph (RDC)
per entity and a global paragraph per image, each in several phrasings, with the ground truth
(``truth``, ``chance``) that attribute accuracy is scored against (``parse_attribute``).

Formats (``write_synth``): ``compositioncap`` (the lmms-eval CompositionCap folder, several references
a record) and ``llava`` (``train.json``, one phrasing a record, visual prompt styles mixed 60% mask,
20% bbox, 20% contour). Same arguments give byte-identical files. ``corpus()`` is the text a tokenizer
is learnt from. Command: ``finecaption synth DIR --images N --seed S [--format ...] [--size PX]``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .masks import encode_compositioncap, mask_to_box
from .prompts import task_prompt
from .visual_prompts import REGION_PHRASES, VISUAL_PROMPT_STYLES, region_phrase

# -- vocabulary ----------------------------------------------------------------------------------------

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "diamond", "hexagon")
# Saturated entity colours and the second colour of their patterns (a shade of the same hue).
COLORS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red": ((215, 30, 35), (135, 15, 20)),
    "orange": ((245, 135, 20), (250, 195, 130)),
    "yellow": ((240, 210, 25), (175, 150, 10)),
    "green": ((35, 155, 55), (20, 95, 30)),
    "blue": ((35, 75, 205), (130, 160, 240)),
    "purple": ((125, 45, 165), (75, 20, 105)),
    "pink": ((240, 100, 175), (250, 175, 215)),
    "brown": ((125, 75, 35), (75, 42, 18)),
    "black": ((25, 25, 25), (95, 95, 95)),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
SIZES: tuple[str, ...] = ("small", "medium", "large")
SHAPES: tuple[str, ...] = ("regular", "wide", "tall")
LOCATIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noisy")
BACKGROUND_PHRASES: dict[str, str] = {"plain": "plain light", "gradient": "light gradient", "noisy": "light mottled"}
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")

ATTRIBUTES: tuple[str, ...] = (
    "category name", "color", "materials/texture", "shape", "relative location with other objects",
    "one-sentence description",
)  # fmt: skip
LOCATION = "relative location with other objects"
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "category name": CATEGORIES,
    "color": tuple(COLORS),
    "materials/texture": TEXTURES,
    "shape": SHAPES,
    LOCATION: LOCATIONS,
}

STYLE_WEIGHTS: dict[str, float] = {"mask": 0.6, "bbox": 0.2, "contour": 0.2}
FORMATS: tuple[str, ...] = ("compositioncap", "llava")
_SIZE_RADIUS = {"small": 0.085, "medium": 0.125, "large": 0.17}  # half-extent as a fraction of the image side
_ASPECT = {"regular": (1.0, 1.0), "wide": (1.4, 0.72), "tall": (0.72, 1.4)}
MIN_VISIBLE_FRACTION = 0.35
MIN_VISIBLE_PIXELS = 200  # at 256 px; scaled with the image area
_NUMBERS = {3: "three", 4: "four", 5: "five", 6: "six"}

# -- phrasing templates ---------------------------------------------------------------------------------
# Fields: cat, color, texture, shape, size, cell, rel (", to the left of the blue square" or ""), occ
# (" It is partly covered by the green circle." or ""), a_color / a_size (the article for that word).
# The subject (the entity's own category) comes before any neighbour mention.

AARC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "category name": ("It is a {cat}.", "The object is a {cat}.", "This region shows a {cat}."),
    "color": ("The {cat} is {color}.", "It is {a_color} {color} {cat}.", "The color of the {cat} is {color}."),
    "materials/texture": (
        "The {cat} is {texture}.",
        "The {cat} has a {texture} texture.",
        "The surface of the {cat} is {texture}.",
    ),
    "shape": ("The {cat} is {shape}.", "The {cat} has a {shape} shape.", "The shape of the {cat} is {shape}."),
    LOCATION: (
        "The {cat} is in the {cell} of the image{rel}.",
        "The {cat} sits in the {cell} part of the image{rel}.",
        "In the image, the {cat} is at the {cell}{rel}.",
    ),
    "one-sentence description": (
        "{A_size} {size} {shape} {color} {cat} with a {texture} texture in the {cell} of the image.",
        "{A_texture} {texture} {color} {cat}, {size} and {shape}, in the {cell} of the image.",
        "There is {a_size} {size} {color} {cat} in the {cell}, {shape} in shape and {texture}.",
    ),
}
RDC_TEMPLATES: tuple[str, ...] = (
    "This is {a_size} {size} {color} {cat} with a {texture} texture. It has a {shape} shape. "
    "It is in the {cell} of the image{rel}.{occ}",
    "The region shows {a_color} {color} {cat}. The {cat} is {size}, {shape} and {texture}. "
    "It sits in the {cell} part of the image{rel}.{occ}",
    "A {size} {cat} in the {cell} of the image{rel}. Its color is {color}, its texture is {texture} "
    "and its shape is {shape}.{occ}",
)
OCCLUSION_TEMPLATES: dict[str, str] = {
    "covered": " It is partly covered by {other}.",
    "covers": " It partly covers {other}.",
}
GLOBAL_ENTITY_TEMPLATES: tuple[str, ...] = (
    "In the {cell} there is {a_size} {size} {color} {texture} {cat}.",
    "{A_size} {size} {shape} {color} {cat} is in the {cell}.",
    "{A_color} {color} {cat} that is {size}, {shape} and {texture} is in the {cell}.",
)
GLOBAL_TEMPLATES: tuple[str, ...] = (
    "The image shows {count} objects on a {background} background. {entities}",
    "{Count} objects lie on a {background} background. {entities}",
    "There are {count} objects in the image. {entities} The background is {background}.",
)

# -- parsing ----------------------------------------------------------------------------------------------

_NEIGHBOUR_MARKERS = (
    "to the left of", "to the right of", "above", "below", "next to", "beside", "near", "in front of",
    "behind", "covered by", "covers", "overlapping", "overlaps",
)  # fmt: skip
_CATEGORY_WORDS = "|".join(CATEGORIES)
_MARKER_WORDS = "|".join(m.replace(" ", r"\s+") for m in _NEIGHBOUR_MARKERS)
_NEIGHBOUR_RE = re.compile(
    rf"\b(?:{_MARKER_WORDS})\s+(?:the|a|an)\s+"
    rf"(?:[a-z]+\s+){{0,4}}?(?:{_CATEGORY_WORDS})(?:e?s)?\b",
    re.IGNORECASE,
)


def _value_pattern(attribute: str) -> re.Pattern:
    values = sorted(ATTRIBUTE_VALUES[attribute], key=len, reverse=True)  # "top left" before "top"
    plural = r"(?:e?s)?" if attribute == "category name" else ""
    alternatives = "|".join(re.escape(v).replace(r"\ ", r"\s+") for v in values)
    return re.compile(rf"\b({alternatives}){plural}\b", re.IGNORECASE)


_VALUE_RES = {attribute: _value_pattern(attribute) for attribute in ATTRIBUTE_VALUES}


def parse_attribute(attribute: str, text: str) -> str | None:
    """The value of ``attribute`` (a key of ``ATTRIBUTE_VALUES``) that the caption ``text`` states.

    Rule: mentions of another object (a relation such as "to the left of", "above", "behind",
    "covered by", "next to" followed by "the"/"a", up to four words and a category noun) are removed
    first; then the known value mentioned first wins (whole words, case-insensitive, the longest value
    at a position, so "top left" before "top"; a category may be plural). None when no value is found.
    """
    if attribute not in _VALUE_RES:
        raise KeyError(f"{attribute!r} is not a parseable attribute; expected one of {', '.join(ATTRIBUTE_VALUES)}")
    if not isinstance(text, str):
        return None
    match = _VALUE_RES[attribute].search(_NEIGHBOUR_RE.sub(" ", text))
    return None if match is None else " ".join(match.group(1).lower().split())


# -- scenes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """One drawn entity: its attributes, geometry, own area (``full_mask``) and visible pixels (``mask``)."""

    category: str
    color: str
    texture: str
    size: str
    shape: str
    center: tuple[float, float]
    radii: tuple[float, float]
    pattern: tuple[int, int, int]  # stripe direction (0 horizontal, 1 vertical, 2 diagonal), phase x, phase y
    full_mask: np.ndarray
    mask: np.ndarray
    location: str

    def values(self) -> dict[str, str]:
        """Canonical values of the parseable attributes (``ATTRIBUTE_VALUES``)."""
        return {
            "category name": self.category,
            "color": self.color,
            "materials/texture": self.texture,
            "shape": self.shape,
            LOCATION: self.location,
        }


@dataclass(frozen=True)
class Scene:
    """An image (uint8 [S, S, 3]), its label map (int8 [S, S], -1 background) and entities in drawing order."""

    seed: int
    index: int
    size: int
    background: str
    image: np.ndarray
    labels: np.ndarray
    entities: tuple[Entity, ...]

    @property
    def name(self) -> str:
        """The id prefix of the scene's records and image: ``s00012``."""
        return f"s{self.index:05d}"

    @functools.cached_property
    def centroids(self) -> tuple[tuple[float, float], ...]:
        """(x, y) centroid of each entity's visible pixels."""
        return tuple(_centroid(entity.mask) for entity in self.entities)

    @functools.cached_property
    def encoded_masks(self) -> tuple[str, ...]:
        """Each entity's mask as a CompositionCap string (``masks.encode_compositioncap``)."""
        return tuple(encode_compositioncap(entity.mask) for entity in self.entities)

    @functools.cached_property
    def boxes(self) -> tuple[tuple[int, int, int, int], ...]:
        """Each entity's mask box (x0, y0, x1, y1), x1 and y1 exclusive (``masks.mask_to_box``)."""
        return tuple(mask_to_box(entity.mask) for entity in self.entities)


def _unit_outline(category: str) -> list[tuple[float, float]]:
    """The category's outline in [-1, 1]^2 (its bounding box), y down; circles and rings are ellipses."""
    if category == "square":
        return [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if category == "triangle":
        return [(0, -1), (1, 1), (-1, 1)]
    if category == "diamond":
        return [(0, -1), (1, 0), (0, 1), (-1, 0)]
    if category == "hexagon":
        return [(math.cos(a), math.sin(a) / math.sin(math.pi / 3)) for a in np.arange(6) * math.pi / 3]
    if category == "cross":
        w = 0.34
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                (-w, -w)]  # fmt: skip
    if category == "star":
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif category == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        points = np.stack(
            [16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], axis=1
        )
    else:
        raise ValueError(f"no outline for {category!r}")
    low, high = points.min(axis=0), points.max(axis=0)
    points = (points - low) / (high - low) * 2 - 1
    return [(float(x), float(y)) for x, y in points]


_OUTLINES = {c: _unit_outline(c) for c in CATEGORIES if c not in ("circle", "ring")}
RING_INNER = 0.55


def shape_mask(category: str, center: tuple[float, float], radii: tuple[float, float], size: int) -> np.ndarray:
    """The pixels (bool [size, size]) that ``category`` covers, centred at ``center`` with half-extents ``radii``."""
    cx, cy = center
    rx, ry = radii
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if category in ("circle", "ring"):
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=1)
        if category == "ring":
            ix, iy = rx * RING_INNER, ry * RING_INNER
            draw.ellipse((cx - ix, cy - iy, cx + ix, cy + iy), fill=0)
    else:
        draw.polygon([(cx + u * rx, cy + v * ry) for u, v in _OUTLINES[category]], fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]

    def pale() -> np.ndarray:  # light, low saturation: channels within 200..245, spread <= 30
        base = rng.uniform(212, 238)
        return np.clip(base + rng.uniform(-15, 15, 3), 200, 245).astype(np.float32)

    if kind == "plain":
        pixels = np.broadcast_to(pale(), (size, size, 3))
    elif kind == "gradient":
        first, second = pale(), pale()
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        t = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = first + t[..., None] * (second - first)
    else:
        coarse = rng.normal(0, 7, (max(size // 16, 2), max(size // 16, 2), 3)).astype(np.float32)
        channels = [Image.fromarray(coarse[..., c], mode="F").resize((size, size), Image.BILINEAR) for c in range(3)]
        smooth = np.stack([np.asarray(channel) for channel in channels], axis=-1)
        pixels = pale() + smooth
    return kind, np.clip(np.rint(pixels), 190, 250).astype(np.uint8)


def _pattern(texture: str, pattern: tuple[int, int, int], size: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Where the second colour goes (bool, same shape as ``ys``/``xs``); the period is 16 px at 256 px."""
    period = max(4, round(16 * size / 256))
    direction, px, py = pattern
    x, y = xs + px, ys + py
    if texture == "striped":
        coordinate = (y, x, x + y)[direction]
        return (coordinate % period) < period // 2
    if texture == "dotted":
        dx, dy = x % period - (period - 1) / 2, y % period - (period - 1) / 2
        return dx * dx + dy * dy <= (0.3 * period) ** 2
    if texture == "checkered":
        cell = period // 2
        return ((x // cell + y // cell) % 2) == 1
    return np.zeros(ys.shape, dtype=bool)


def _location(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    size = mask.shape[0]
    row, col = min(int(ys.mean() * 3 / size), 2), min(int(xs.mean() * 3 / size), 2)
    return LOCATIONS[3 * row + col]


def make_scene(seed: int, index: int, size: int = 256) -> Scene:
    """Scene ``index`` of the data set ``seed``: deterministic, independent of the other scenes."""
    rng = np.random.default_rng([seed, index, 0])
    min_pixels = max(8, round(MIN_VISIBLE_PIXELS * (size / 256) ** 2))
    background, image = _background(rng, size)
    while True:
        target = int(rng.integers(3, 7))
        labels = np.full((size, size), -1, dtype=np.int8)
        drawn: list[dict[str, Any]] = []
        for _ in range(target):
            for _attempt in range(40):
                candidate = _sample_entity(rng, size, drawn)
                area = int(candidate["full_mask"].sum())
                if area < min_pixels:
                    continue
                trial = labels.copy()
                trial[candidate["full_mask"]] = len(drawn)
                counts = np.bincount(trial.ravel().astype(np.int64) + 1, minlength=len(drawn) + 2)[1:]
                needed = [max(min_pixels, MIN_VISIBLE_FRACTION * entity["area"]) for entity in drawn]
                if all(counts[k] >= need for k, need in enumerate(needed)):
                    candidate["area"] = area
                    drawn.append(candidate)
                    labels = trial
                    break
        if len(drawn) >= 3:
            break
    ys, xs = np.mgrid[0:size, 0:size]
    entities = []
    for k, entity in enumerate(drawn):
        visible = labels == k
        base, second = COLORS[entity["color"]]
        where = _pattern(entity["texture"], entity["pattern"], size, ys[visible], xs[visible])
        image[visible] = np.where(where[:, None], np.asarray(second, np.uint8), np.asarray(base, np.uint8))
        entity.pop("area")
        entities.append(Entity(**entity, mask=visible, location=_location(visible)))
    return Scene(seed, index, size, background, image, labels, tuple(entities))


def _sample_entity(rng: np.random.Generator, size: int, drawn: Sequence[dict]) -> dict[str, Any]:
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    size_name = SIZES[int(rng.integers(len(SIZES)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = _SIZE_RADIUS[size_name] * size * rng.uniform(0.92, 1.08)
    rx, ry = (radius * f for f in _ASPECT[shape])
    margin = 1.0
    if drawn and rng.random() < 0.5:  # near an entity already drawn: overlaps are frequent
        other = drawn[int(rng.integers(len(drawn)))]
        angle = rng.uniform(0, 2 * math.pi)
        distance = (max(other["radii"]) + max(rx, ry)) * rng.uniform(0.45, 0.95)
        cx = other["center"][0] + distance * math.cos(angle)
        cy = other["center"][1] + distance * math.sin(angle)
    else:
        cx, cy = rng.uniform(0, size, 2)
    # Rounded, so that the stored geometry redraws the same mask (``shape_mask``).
    rx, ry = round(rx, 3), round(ry, 3)
    cx = round(float(np.clip(cx, rx + margin, size - rx - margin)), 3)
    cy = round(float(np.clip(cy, ry + margin, size - ry - margin)), 3)
    pattern = (int(rng.integers(3)), int(rng.integers(64)), int(rng.integers(64)))
    return {
        "category": category, "color": color, "texture": texture, "size": size_name, "shape": shape,
        "center": (cx, cy), "radii": (rx, ry), "pattern": pattern,
        "full_mask": shape_mask(category, (cx, cy), (rx, ry), size),
    }  # fmt: skip


def box_ambiguous(scene: Scene, k: int) -> bool:
    """Whether the bounding box of entity ``k``'s mask holds visible pixels of another entity."""
    x0, y0, x1, y1 = scene.boxes[k]
    window = scene.labels[y0:y1, x0:x1]
    return bool(((window >= 0) & (window != k)).any())


def overlap_rate(scenes: Sequence[Scene]) -> float:
    """The fraction of entities whose box is ambiguous (``box_ambiguous``) over ``scenes``."""
    flags = [box_ambiguous(scene, k) for scene in scenes for k in range(len(scene.entities))]
    return sum(flags) / max(len(flags), 1)


# -- references -------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _name(scene: Scene, k: int) -> str:
    """How another sentence refers to entity ``k``: "the blue square", more words when that is ambiguous."""
    entity = scene.entities[k]
    same = [e for e in scene.entities if (e.color, e.category) == (entity.color, entity.category)]
    if len(same) == 1:
        return f"the {entity.color} {entity.category}"
    return f"the {entity.size} {entity.color} {entity.texture} {entity.category}"


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _relation(scene: Scene, k: int) -> str:
    """ ", to the left of the blue square": entity ``k`` against its nearest neighbour (visible centroids)."""
    if len(scene.entities) < 2:
        return ""
    cx, cy = scene.centroids[k]
    best = None
    for j in range(len(scene.entities)):
        if j != k:
            ox, oy = scene.centroids[j]
            distance = (ox - cx) ** 2 + (oy - cy) ** 2
            if best is None or distance < best[0]:
                best = (distance, j, cx - ox, cy - oy)
    _, j, dx, dy = best
    if abs(dx) >= abs(dy):
        relation = "to the left of" if dx < 0 else "to the right of"
    else:
        relation = "above" if dy < 0 else "below"
    return f", {relation} {_name(scene, j)}"


def _occlusion(scene: Scene, k: int) -> str:
    """ " It is partly covered by the green circle." (a later entity overlaps it), or " It partly covers ..."."""
    own = scene.entities[k].full_mask
    for j in range(len(scene.entities) - 1, k, -1):
        if (own & scene.entities[j].full_mask).any():
            return OCCLUSION_TEMPLATES["covered"].format(other=_name(scene, j))
    for j in range(k):
        if (own & scene.entities[j].full_mask).any():
            return OCCLUSION_TEMPLATES["covers"].format(other=_name(scene, j))
    return ""


def _fields(entity: Entity, rel: str = "", occ: str = "") -> dict[str, str]:
    fields = {
        "cat": entity.category, "color": entity.color, "texture": entity.texture, "shape": entity.shape,
        "size": entity.size, "cell": entity.location, "rel": rel, "occ": occ,
    }  # fmt: skip
    for key in ("color", "size", "texture"):
        fields[f"a_{key}"] = _article(fields[key])
        fields[f"A_{key}"] = _article(fields[key]).capitalize()
    return fields


def aarc_captions(scene: Scene, k: int, attribute: str) -> list[str]:
    """Every phrasing of entity ``k``'s ``attribute`` (one of ``ATTRIBUTES``)."""
    fields = _fields(scene.entities[k], rel=_relation(scene, k) if attribute == LOCATION else "")
    return [template.format(**fields) for template in AARC_TEMPLATES[attribute]]


def dense_captions(scene: Scene, k: int) -> list[str]:
    """Every phrasing of entity ``k``'s regional dense paragraph."""
    fields = _fields(scene.entities[k], rel=_relation(scene, k), occ=_occlusion(scene, k))
    return [template.format(**fields) for template in RDC_TEMPLATES]


def global_captions(scene: Scene) -> list[str]:
    """Every phrasing of the image's paragraph: the entities in reading order (grid cell, then x)."""
    order = sorted(
        range(len(scene.entities)),
        key=lambda k: (LOCATIONS.index(scene.entities[k].location), scene.centroids[k][0], k),
    )
    count = _NUMBERS[len(scene.entities)]
    captions = []
    for number, template in enumerate(GLOBAL_TEMPLATES):
        entity_template = GLOBAL_ENTITY_TEMPLATES[number]
        entities = " ".join(entity_template.format(**_fields(scene.entities[k])) for k in order)
        background = BACKGROUND_PHRASES[scene.background]
        captions.append(
            template.format(count=count, Count=count.capitalize(), background=background, entities=entities)
        )
    return captions


def truth(scene: Scene, k: int) -> dict[str, str]:
    """The canonical values of entity ``k``'s parseable attributes."""
    return scene.entities[k].values()


def chance(scene: Scene, k: int, attribute: str) -> float:
    """The fraction of the scene's entities whose ``attribute`` equals entity ``k``'s."""
    value = scene.entities[k].values()[attribute]
    return sum(e.values()[attribute] == value for e in scene.entities) / len(scene.entities)


# -- records --------------------------------------------------------------------------------------------


def image_path(scene: Scene) -> str:
    """The scene's image file, relative to the output folder: ``images/s00012.png``."""
    return f"images/{scene.name}.png"


def compositioncap_records(scene: Scene, references: int = 3) -> list[dict[str, Any]]:
    """The CompositionCap test records of ``scene``: per entity its AARC records and RDC record, then the global one.

    Each record carries ``references`` phrasings (at most the number of templates), in template order.
    """
    base = {"image": image_path(scene), "height": scene.size, "width": scene.size}
    records = []
    for k in range(len(scene.entities)):
        prefix = f"{scene.name}_e{k}"
        region = {**base, "mask": scene.encoded_masks[k], "entity": k, "truth": truth(scene, k)}
        for attribute in ATTRIBUTES:
            record = {
                "id": f"{prefix}_{_slug(attribute)}", **region, "task": "aarc", "attribute": attribute,
                "captions": aarc_captions(scene, k, attribute)[:references],
            }  # fmt: skip
            if attribute in ATTRIBUTE_VALUES:
                record["chance"] = chance(scene, k, attribute)
            records.append(record)
        records.append(
            {"id": f"{prefix}_dense", **region, "task": "rdc", "attribute": None,
             "captions": dense_captions(scene, k)[:references]}
        )  # fmt: skip
    records.append(
        {"id": f"{scene.name}_global", **base, "mask": None, "entity": None, "task": "global", "attribute": None,
         "captions": global_captions(scene)[:references]}
    )  # fmt: skip
    return records


def _slug(attribute: str) -> str:
    """A short id part per attribute: "color", "category", "texture", "shape", "location", "description"."""
    return {
        "category name": "category", "materials/texture": "texture", LOCATION: "location",
        "one-sentence description": "description",
    }.get(attribute, attribute)  # fmt: skip


def region_prompt(
    task: str, attribute: str | None, style: str | None, box: tuple[int, int, int, int] | None, size: tuple[int, int]
) -> str:
    """The instruction as ``compositioncap.doc_to_text`` gives it for the region of mask box ``box`` (None: the
    whole image) shown in ``style``, in an image of ``size`` (width, height)."""
    if box is None:
        return task_prompt(task, attribute)
    return task_prompt(task, attribute, region=region_phrase(style, box, size))


def _pick_style(rng: np.random.Generator) -> str:
    styles = list(STYLE_WEIGHTS)
    return styles[int(rng.choice(len(styles), p=list(STYLE_WEIGHTS.values())))]


def llava_records(scene: Scene, rng: np.random.Generator | None = None) -> list[dict[str, Any]]:
    """LLaVA training records of ``scene``: one per (entity, attribute), one dense per entity, one global.

    ``rng`` picks each answer's phrasing and each region's visual prompt style (``STYLE_WEIGHTS``);
    by default it is seeded from the scene, so the records are deterministic.
    """
    rng = np.random.default_rng([scene.seed, scene.index, 1]) if rng is None else rng
    size = (scene.size, scene.size)
    base = {"image": image_path(scene), "height": scene.size, "width": scene.size}

    def record(record_id: str, task: str, attribute: str | None, answer: str, k: int | None) -> dict:
        out = {"id": record_id, **base}
        style = box = None
        if k is not None:
            style, box = _pick_style(rng), scene.boxes[k]
            out["mask"] = scene.encoded_masks[k]
            out["visual_prompt"] = style
        prompt = region_prompt(task, attribute, style, box, size)
        out["conversations"] = [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}]
        return out

    def pick(captions: list[str]) -> str:
        return captions[int(rng.integers(len(captions)))]

    records = []
    for k in range(len(scene.entities)):
        prefix = f"{scene.name}_e{k}"
        for attribute in ATTRIBUTES:
            answer = pick(aarc_captions(scene, k, attribute))
            records.append(record(f"{prefix}_{_slug(attribute)}", "aarc", attribute, answer, k))
        records.append(record(f"{prefix}_dense", "rdc", None, pick(dense_captions(scene, k)), k))
    records.append(record(f"{scene.name}_global", "global", None, pick(global_captions(scene)), None))
    return records


def _dumps(record: Any) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def write_synth(
    directory: str | Path,
    images: int,
    seed: int = 0,
    format: str = "compositioncap",
    size: int = 256,
    progress: bool | None = None,
) -> Path:
    """Write ``images`` scenes to ``directory`` in ``format``; returns the records file.

    ``compositioncap``: ``compositioncap_test.jsonl`` + ``images/``; ``llava``: ``train.json`` + ``images/``.
    ``progress``: a tqdm bar (None: only for 200 images or more).
    """
    from tqdm.auto import tqdm

    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if images < 1 or size < 32:
        raise ValueError(f"need at least one image of at least 32 px (got {images} images of {size} px)")
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    path = directory / ("compositioncap_test.jsonl" if format == "compositioncap" else "train.json")
    show = images >= 200 if progress is None else progress
    with open(path, "w", encoding="utf-8") as out:
        if format == "llava":
            out.write("[\n")
        first = True
        for index in tqdm(range(images), desc="synth", disable=not show):
            scene = make_scene(seed, index, size)
            Image.fromarray(scene.image, mode="RGB").save(directory / image_path(scene), format="PNG")
            if format == "compositioncap":
                out.writelines(_dumps(r) + "\n" for r in compositioncap_records(scene))
            else:
                for record in llava_records(scene):
                    out.write(("" if first else ",\n") + _dumps(record))
                    first = False
        if format == "llava":
            out.write("\n]\n")
    return path


# -- tokenizer corpus -------------------------------------------------------------------------------------


def corpus(seed: int = 0) -> list[str]:
    """Text to learn a tokenizer from: every template filled with every vocabulary word at least once,
    the neighbour and occlusion phrases, and the task prompts of every visual prompt style."""
    rng = np.random.default_rng(seed)
    vocab = {
        "cat": CATEGORIES, "color": tuple(COLORS), "texture": TEXTURES, "shape": SHAPES, "size": SIZES,
        "cell": LOCATIONS,
    }  # fmt: skip
    rounds = max(len(v) for v in vocab.values())

    def fields(i: int) -> dict[str, str]:
        # Round i names the i-th word of every vocabulary (a random one once a vocabulary is used up).
        picked = {k: words[i if i < len(words) else int(rng.integers(len(words)))] for k, words in vocab.items()}
        other = f"the {picked['color']} {CATEGORIES[(i + 1) % len(CATEGORIES)]}"
        relation = RELATIONS[i % len(RELATIONS)]
        occlusion = OCCLUSION_TEMPLATES[("covered", "covers")[i % 2]].format(other=other)
        out = {**picked, "rel": f", {relation} {other}", "occ": occlusion}
        for key in ("color", "size", "texture"):
            out[f"a_{key}"] = _article(out[key])
            out[f"A_{key}"] = _article(out[key]).capitalize()
        return out

    texts = []
    for i in range(rounds):
        f = fields(i)
        for templates in AARC_TEMPLATES.values():
            texts.extend(t.format(**f) for t in templates)
        texts.extend(t.format(**f) for t in RDC_TEMPLATES)
        entities = " ".join(t.format(**f) for t in GLOBAL_ENTITY_TEMPLATES)
        count = _NUMBERS[3 + i % 4]
        background = BACKGROUND_PHRASES[BACKGROUNDS[i % len(BACKGROUNDS)]]
        texts.extend(
            t.format(count=count, Count=count.capitalize(), background=background, entities=entities)
            for t in GLOBAL_TEMPLATES
        )
    for style in VISUAL_PROMPT_STYLES:
        for box in ((0, 0, 128, 128), (37, 81, 203, 250)):
            region = region_phrase(style, box, (256, 256))
            texts.extend(task_prompt("aarc", attribute, region=region) for attribute in ATTRIBUTES)
            texts.append(task_prompt("rdc", region=region))
    texts.append(task_prompt("global"))
    assert set(REGION_PHRASES) == set(VISUAL_PROMPT_STYLES)
    return texts
