"""A small synthetic CompositionCap data folder (drawn shapes, template captions) for smoke runs.

``finecaption compositioncap-demo DIR`` calls ``write_demo_folder``; use DIR as ``$COMPOSITIONCAP_ROOT``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .compositioncap_data import TEST_FILE

_SHAPES = ("square", "circle")
_COLORS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (50, 90, 220), "yellow": (235, 200, 40)}


def write_demo_folder(root: str | Path, images: int = 4, seed: int = 0) -> Path:
    """Write a small synthetic CompositionCap folder (drawn shapes, template captions) for smoke runs.

    Each image holds a square and a circle: two "aarc" records (color, shape) and one "rdc" record
    per shape, and one "global" record. Returns the path of ``compositioncap_test.jsonl``.
    """
    from PIL import ImageDraw

    from .masks import encode_compositioncap

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for number in range(images):
        width, height = int(rng.integers(96, 192)), int(rng.integers(96, 192))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(150, 256, 3)))
        names = rng.choice(list(_COLORS), size=2, replace=False)
        described = []
        for index, (shape, color) in enumerate(zip(_SHAPES, names, strict=True)):
            side = min(width, height) // 3
            x0 = (width // 2) * index + int(rng.integers(0, width // 2 - side))
            y0 = int(rng.integers(0, height - side))
            box = (x0, y0, x0 + side, y0 + side)
            region = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(region)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=1)
            image.paste(_COLORS[color], mask=region.point(lambda v: 255 * v))
            mask = encode_compositioncap(np.asarray(region) > 0)
            side_name = "left" if index == 0 else "right"
            entity = f"img{number}_{shape}"
            base = {"image": f"images/{number}.png", "height": height, "width": width, "mask": mask}
            for attribute, caption in (
                ("color", f"The {shape} is {color}."),
                ("shape", f"It is a {shape} with {'straight' if shape == 'square' else 'round'} edges."),
            ):
                records.append(
                    {"id": f"{entity}_{attribute}", **base, "task": "aarc", "attribute": attribute,
                     "captions": [caption]}
                )  # fmt: skip
            records.append(
                {"id": f"{entity}_dense", **base, "task": "rdc", "attribute": None,
                 "captions": [f"A {color} {shape} on the {side_name} side of the picture, drawn flat."]}
            )  # fmt: skip
            described.append(f"a {color} {shape} on the {side_name}")
        image.save(root / "images" / f"{number}.png")
        records.append(
            {"id": f"img{number}_global", "image": f"images/{number}.png", "height": height, "width": width,
             "mask": None, "task": "global", "attribute": None,
             "captions": [f"A plain picture with {described[0]} and {described[1]}."]}
        )  # fmt: skip
    path = root / TEST_FILE
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path
