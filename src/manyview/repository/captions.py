"""Captions of synthetic scenes in words (what the text alignment is trained on): the kind of scene, its primitives
with their colours and textures, the ground or the room's surfaces.

Colour names come from a material's bright colour (each procedural material mixes a dark, a bright and a middle
colour; the bright one dominates what is seen). ``variant`` draws a different but equally true wording (facts
shuffled and subsets of them), seeded, for training.
"""

from __future__ import annotations

import colorsys

import numpy as np

from manyview.synth.scene import Material, Primitive, Scene

PATTERN_WORDS = {"checker": "checkered", "stripes": "striped", "dots": "dotted", "noise": "mottled",
                 "gradient": "gradient", "bricks": "brick"}
SHAPE_WORDS = {"box": "box", "sphere": "ball", "cylinder": "cylinder", "quad": "panel"}


def colour_name(rgb) -> str:
    """A plain colour word for an RGB triple in [0, 1]."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.8 else "grey"
    hue = h * 360
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"), (255, "blue"),
                        (290, "purple"), (335, "pink"), (361, "red")):
        if hue < limit:
            return name
    return "red"


def material_words(material: Material) -> str:
    return f"{colour_name(material.colors[1])} {PATTERN_WORDS[material.pattern]}"


def _a(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _object_phrase(prim: Primitive) -> str:
    return _a(f"{material_words(prim.material)} {SHAPE_WORDS[prim.shape]}")


def _facts(scene: Scene) -> tuple[str, list[str]]:
    """(the scene's headline, its facts)."""
    objects = [p for p in scene.primitives if p.is_object]
    structure = [p for p in scene.primitives if not p.is_object]
    if scene.kind == "room":
        floor, ceiling, *walls = structure
        furniture = [p for p in objects if p.shape != "quad"]
        paintings = [p for p in objects if p.shape == "quad"]
        head = "an indoor room"
        facts = [_a(f"{material_words(floor.material)} floor"), _a(f"{material_words(ceiling.material)} ceiling")]
        facts += [_a(f"{material_words(w.material)} wall") for w in walls]
        facts += [_object_phrase(p) for p in furniture]
        facts.append(f"{len(paintings)} paintings on the walls" if len(paintings) != 1 else "a painting on the wall")
        return head, facts
    ground = structure[0]
    head = f"{len(objects)} objects outdoors on {_a(material_words(ground.material))} ground"
    return head, [_object_phrase(p) for p in objects]


def caption(scene: Scene, variant: int | None = None) -> str:
    """The scene in one sentence; ``variant`` (an int): a shuffled subset of the facts, seeded by it."""
    head, facts = _facts(scene)
    if variant is not None:
        rng = np.random.default_rng(variant)
        keep = max(1, int(round(len(facts) * rng.uniform(0.4, 1.0))))
        facts = [facts[i] for i in rng.permutation(len(facts))[:keep]]
    return f"{head} with " + ", ".join(facts) if facts else head


__all__ = ["caption", "colour_name", "material_words"]
