"""A compositional world in GenEval's six categories, rendered exactly, for the embedded model.

GenEval (Ghosh et al. 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image
Alignment") scores a text-to-image model with an object detector over six task categories and
counts a prompt as correct only when every check it implies passes. This module is that
benchmark's grammar on a synthetic renderer (the colour words and RGB values of
flowrl.data.shapes; three rectangles told apart by aspect: a wide bar, a square, a tall pillar), so that the ground truth is a rule, not a detector
(flowrl.rewards.geneval is the verifier):

  category        prompt                                what must hold (GenEval's metadata)
  single_object   "a bar"                            >= 1 bar (any colour)
  two_object      "a bar and a square"               >= 1 bar and >= 1 square
  counting        "three green pillars"               exactly 3 pillars, all green
  colors          "a purple square"                     >= 1 square, every square purple
  position        "a red bar left of a blue square"  the red bars and blue squares exist and
                                                        each red bar is left of each blue square
  color_attr      "a red bar and a blue square"      >= 1 bar, all red; >= 1 square, all blue

As in GenEval, single_object and two_object name no colour (the renderer picks one per object at
random) and color_attr pairs two different shapes with two different colours; position names two
different shapes, as GenEval's does. Two departures, each to make the held-out split compositional
and large (see "Splits"): counting and position prompts name colours (GenEval's name the class
only), and counting runs from one to four (GenEval's from two: one is its single_object).
Without colour words the position category would have 24 prompts, counting 12.

Vocabulary: 6 colours (red yellow green blue purple white), 3 shapes (bar, square, pillar; + plurals), 4 number words,
4 relations (left of, right of, above, below; GenEval's), "a" and "and": 23 words, prompts of at
most 8 words (the tiny model's max_text_len). 1143 prompts in all (single_object 3, two_object
6, counting 72, colors 18, position 864, color_attr 180). Position prompts outnumber the rest;
`sample_specs(balanced=True)` draws a category first, then a prompt of it.

Images: objects of the palette on a black background (black is no object colour; the closest
palette colour to it is green at RGB distance 0.73, the closest pair in the palette blue/purple at
0.55), flat colours, no antialiasing, so snapping a rendering to the palette recovers it exactly.
Layout: a 2 x 2 grid of 16 px cells; each object sits centred in a cell of its own, drawn at
random, all objects of one half-size (6.5 px at 32 px, the largest that keeps GAP px between
neighbours' boxes: a 13 x 13 square, a 13 x 6.5 bar), so four objects fill the canvas. A position
prompt's pair takes two cells that stand in the relation under the renderer's rule (`satisfies`:
along the axis by >= rA + rB + GAP, off it by at most half of that: side by side in a row for
left / right, one above the other for above / below), which GenEval's rule
(flowrl.rewards.geneval.relations) reads as the relation with a wide margin and its mirror as the
opposite. Discrete cells, not uniform centres and sizes, on purpose: the 64-token tiny model,
pretrained for 1000 steps on uniform layouts at 48 px, drew a soup of patch-sized fragments
(experiments/compositional-world/README.md); a prompt's images are now a few layouts it can learn,
and GRPO still has every relation, count and binding to get right.

Resolution: 32 px with the shipped model's 4 px patches (64 tokens of 48 channels: the `shapes`
world's cost, so `make train` keeps its speed). 48 px with 6 px patches (also 64 tokens) and
uniform layouts was tried first and not learnt (experiments/compositional-world/README.md, with
the forward costs of 32 / 48 / 64 px measured there).

Splits (held out by composition, not by string): a prompt is held out when it contains any of
  - a held-out colour-shape binding (HELDOUT_BINDINGS: yellow bar, blue square, white
    pillar), in any category that names colours;
  - a held-out count of a shape (HELDOUT_COUNTS: two pillars, three bars, four squares);
  - a held-out spatial triple (HELDOUT_RELATIONS: bar left of square, square above pillar,
    pillar right of bar, square below bar);
  - a held-out pairing of two bindings in one image (position or color_attr): about one in
    six of the pairings of differently-shaped bindings (`is_heldout_pairing`; 12 of the 75
    pairings of two train bindings).
Every word occurs in both splits, and every part of a held-out combination occurs in train (the
colour on other shapes, the relation between other shapes, ...). single_object and two_object
prompts contain no composition to hold out and are train prompts only. train 593 / heldout 550
prompts (counting 45/27, colors 15/3, position 420/444, color_attr 104/76, single_object 3/0,
two_object 6/0); `split_specs("all")` is their union.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache, lru_cache

import numpy as np
import torch

from flowrl.data.prompts import PromptData, evenly_spaced
from flowrl.data.shapes import COLORS

IMAGE_SIZE = 32
BACKGROUND: tuple[float, float, float] = (0.0, 0.0, 0.0)
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS: tuple[str, ...] = ("one", "two", "three", "four")  # NUMBERS[n - 1] names n
MAX_COUNT = len(NUMBERS)
GAP = 3.0  # px between any two objects' bounding boxes: >= 1 empty pixel once rasterised
MIN_RADIUS = 4.0  # px: the smallest half-size at which the verifier reads the aspect with margin
# The world's objects, told apart by their bounding box's aspect (height / width) alone, which
# survives the blocky, ragged blobs a 64-token model draws (circle / square / triangle, told apart
# by fill and skew, did not: experiments/compositional-world/README.md): half-width x half-height
# in units of the half-size r.
SHAPES: tuple[str, ...] = ("bar", "square", "pillar")
EXTENT: dict[str, tuple[float, float]] = {"bar": (1.0, 0.5), "square": (1.0, 1.0), "pillar": (0.5, 1.0)}
GRID = 2  # objects sit centred in the cells of a GRID x GRID layout (see `layout`)

HELDOUT_BINDINGS = frozenset({("yellow", "bar"), ("blue", "square"), ("white", "pillar")})
HELDOUT_COUNTS = frozenset({(2, "pillar"), (3, "bar"), (4, "square")})
HELDOUT_RELATIONS = frozenset(
    {
        ("bar", "left of", "square"),
        ("square", "above", "pillar"),
        ("pillar", "right of", "bar"),
        ("square", "below", "bar"),
    }
)


def is_heldout_pairing(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether bindings a and b ((colour, shape), of different shapes) are never shown together in
    train. About one in six, spread over colours and shapes: the colour indices' sum plus the shapes'
    (an order-free rule, so "a X and a Y" and "a Y and a X" fall on the same side)."""
    colors, shapes = list(COLORS), list(SHAPES)
    key = colors.index(a[0]) + colors.index(b[0]) + shapes.index(a[1]) + shapes.index(b[1])
    return key % 6 == 0


@dataclass(frozen=True)
class Obj:
    """One kind of object a prompt asks for: `count` of `shape`, all `color` (None: any colour)."""

    shape: str
    color: str | None = None
    count: int = 1


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. `objects[0]` is the relation's subject for position prompts
    ("objects[0] <relation> objects[1]"). Construction checks the category's grammar."""

    category: str
    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self):
        check_spec(self)

    @property
    def prompt(self) -> str:
        o = self.objects
        if self.category == "single_object":
            return f"a {o[0].shape}"
        if self.category == "two_object":
            return f"a {o[0].shape} and a {o[1].shape}"
        if self.category == "counting":
            n = o[0].count
            return f"{NUMBERS[n - 1]} {o[0].color} {o[0].shape}{'s' if n > 1 else ''}"
        if self.category == "colors":
            return f"a {o[0].color} {o[0].shape}"
        if self.category == "position":
            return f"a {o[0].color} {o[0].shape} {self.relation} a {o[1].color} {o[1].shape}"
        return f"a {o[0].color} {o[0].shape} and a {o[1].color} {o[1].shape}"  # color_attr


def check_spec(spec: Spec) -> None:
    """ValueError unless spec is a prompt of the world (the grammar in the module docstring)."""
    cat, objs = spec.category, spec.objects
    if cat not in CATEGORIES:
        raise ValueError(f"unknown category {cat!r}; known: {CATEGORIES}")
    arity = 1 if cat in ("single_object", "counting", "colors") else 2
    if len(objs) != arity:
        raise ValueError(f"{cat} takes {arity} object(s), got {len(objs)}")
    for o in objs:
        if o.shape not in SHAPES:
            raise ValueError(f"unknown shape {o.shape!r}; known: {SHAPES}")
        if (o.color is None) != (cat in ("single_object", "two_object")):
            raise ValueError(f"{cat}: {'no' if o.color is None else 'a'} colour on {o}")
        if o.color is not None and o.color not in COLORS:
            raise ValueError(f"unknown colour {o.color!r}; known: {list(COLORS)}")
        if not 1 <= o.count <= (MAX_COUNT if cat == "counting" else 1):
            raise ValueError(f"{cat}: count {o.count} out of range")
    if (spec.relation is not None) != (cat == "position"):
        raise ValueError(f"{cat}: relation {spec.relation!r}")
    if spec.relation is not None and spec.relation not in RELATIONS:
        raise ValueError(f"unknown relation {spec.relation!r}; known: {RELATIONS}")
    if arity == 2 and objs[0].shape == objs[1].shape:
        raise ValueError(f"{cat} names two different shapes (as GenEval names two classes), got {objs[0].shape} twice")
    if cat == "color_attr" and objs[0].color == objs[1].color:
        raise ValueError(f"color_attr names two different colours, got {objs[0].color} twice")


def all_specs() -> list[Spec]:
    """Every prompt of the world, in a fixed order (category by category)."""
    colors, pairs = list(COLORS), list(itertools.permutations(SHAPES, 2))
    specs = [Spec("single_object", (Obj(s),)) for s in SHAPES]
    specs += [Spec("two_object", (Obj(a), Obj(b))) for a, b in pairs]
    specs += [Spec("counting", (Obj(s, c, n),)) for n in range(1, MAX_COUNT + 1) for c in colors for s in SHAPES]
    specs += [Spec("colors", (Obj(s, c),)) for c in colors for s in SHAPES]
    specs += [
        Spec("position", (Obj(a, ca), Obj(b, cb)), rel) for rel in RELATIONS for a, b in pairs for ca in colors for cb in colors
    ]
    specs += [Spec("color_attr", (Obj(a, ca), Obj(b, cb))) for a, b in pairs for ca in colors for cb in colors if ca != cb]
    return specs


def compositions(spec: Spec) -> set[tuple]:
    """The combinations of words a prompt shows the model, each a tuple tagged by its kind:
    ('binding', colour, shape), ('count', n, shape), ('relation', shape, relation, shape) and
    ('pairing', binding, binding) (sorted). The split holds out prompts by these."""
    out: set[tuple] = set()
    for o in spec.objects:
        if o.color is not None:
            out.add(("binding", o.color, o.shape))
    if spec.category == "counting":
        out.add(("count", spec.objects[0].count, spec.objects[0].shape))
    if spec.category == "position":
        out.add(("relation", spec.objects[0].shape, spec.relation, spec.objects[1].shape))
    if spec.category in ("position", "color_attr"):
        a, b = sorted((o.color, o.shape) for o in spec.objects)
        out.add(("pairing", a, b))
    return out


def heldout_compositions() -> set[tuple]:
    """Every composition that no train prompt shows (the union over the four kinds)."""
    held = {("binding", c, s) for c, s in HELDOUT_BINDINGS}
    held |= {("count", n, s) for n, s in HELDOUT_COUNTS}
    held |= {("relation", *t) for t in HELDOUT_RELATIONS}
    bindings = [(c, s) for c in COLORS for s in SHAPES]
    for a, b in itertools.combinations(sorted(bindings), 2):
        if a[1] != b[1] and is_heldout_pairing(a, b):
            held.add(("pairing", a, b))
    return held


def is_heldout(spec: Spec) -> bool:
    return bool(compositions(spec) & _heldout())


@lru_cache(maxsize=1)
def _heldout() -> frozenset:
    return frozenset(heldout_compositions())


@cache
def _split(split: str) -> tuple[Spec, ...]:
    specs = all_specs()
    if split == "all":
        return tuple(specs)
    if split == "train":
        return tuple(s for s in specs if not is_heldout(s))
    if split == "heldout":
        return tuple(s for s in specs if is_heldout(s))
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def split_specs(split: str, categories: Sequence[str] | None = None) -> list[Spec]:
    """'train', 'heldout' or 'all' (see the module docstring), optionally only some categories."""
    specs = list(_split(split))
    if categories is None:
        return specs
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories {sorted(unknown)}; known: {CATEGORIES}")
    return [s for s in specs if s.category in categories]


def prompts(
    train_split: str = "train",
    val_split: str = "heldout",
    categories: Sequence[str] | None = None,
    balanced: bool = False,
    val_per_category: int | None = None,
):
    """Hydra entry point (`data=geneval`): the world's prompts as flowrl.data.prompts.PromptData.
    balanced: the train list repeats each category's prompts so that every category has about the
    same share of it (position, 420 of 593 train prompts, would otherwise fill 71% of the prompt
    stream). val_per_category: the held-out list holds exactly that many entries of each category
    (its prompts cycled in order, or evenly spaced when it has more), so that GenEval's overall,
    the mean over categories, is not dominated by the noise of its smallest one (3 held-out colors
    prompts next to 444 position ones); an entry repeated gets its own fixed noise (one image per
    list entry at val.samples_per_prompt 1). None: every held-out prompt once."""

    cats = list(categories) if categories is not None else None
    train = split_specs(train_split, cats)
    if balanced:
        by_cat: dict[str, list[Spec]] = {}
        for s in train:
            by_cat.setdefault(s.category, []).append(s)
        largest = max(len(v) for v in by_cat.values())
        train = [s for specs in by_cat.values() for s in specs * round(largest / len(specs))]
    val = [s.prompt for s in split_specs(val_split, cats)]
    if val_per_category is not None:
        val = per_category(split_specs(val_split, cats), val_per_category)
    return PromptData(train=[s.prompt for s in train], val=val)


def per_category(specs: Sequence[Spec], n: int) -> list[str]:
    """n prompts of each category of specs: cycled in order when it has fewer, evenly spaced when more."""
    by_cat: dict[str, list[Spec]] = {}
    for s in specs:
        by_cat.setdefault(s.category, []).append(s)
    out = []
    for group in by_cat.values():
        k = len(group)
        out += [group[i % k].prompt for i in range(n)] if k <= n else [s.prompt for s in evenly_spaced(group, n)]
    return out


# ---- parsing: the reward receives prompt strings --------------------------------------------
_PLURALS = {f"{s}s": s for s in SHAPES}


def parse(prompt: str) -> Spec:
    """Inverse of Spec.prompt: ValueError for text outside the world's grammar."""
    words = prompt.strip().lower().split()
    try:
        spec = _parse_words(words)
    except (ValueError, IndexError) as err:
        raise ValueError(f"not a prompt of the geneval world: {prompt!r} ({err})") from None
    if spec is None:
        raise ValueError(f"not a prompt of the geneval world: {prompt!r} (see flowrl.data.geneval's grammar)")
    return spec


def _parse_words(w: list[str]) -> Spec | None:
    if len(w) == 3 and w[0] in NUMBERS:  # counting: "three green pillars"
        n = NUMBERS.index(w[0]) + 1
        shape = w[2] if n == 1 else _PLURALS.get(w[2])
        if shape is None:
            raise ValueError(f"{w[0]!r} takes a plural shape, got {w[2]!r}")
        return Spec("counting", (Obj(shape, w[1], n),))
    if not w or w[0] != "a":
        return None
    if len(w) == 2:
        return Spec("single_object", (Obj(w[1]),))
    if len(w) == 3:
        return Spec("colors", (Obj(w[2], w[1]),))
    if len(w) == 5 and w[2] == "and" and w[3] == "a":
        return Spec("two_object", (Obj(w[1]), Obj(w[4])))
    if len(w) in (7, 8) and w[-3] == "a":
        middle = " ".join(w[3:-3])
        first, second = Obj(w[2], w[1]), Obj(w[-1], w[-2])
        if middle == "and":
            return Spec("color_attr", (first, second))
        if middle in RELATIONS:
            return Spec("position", (first, second), middle)
    return None


# ---- rendering ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placed:
    """One drawn object: shape mask of half-size r centred at (cx, cy) px, in colour `color`."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of an axis-aligned rectangle centred at (cx, cy): half-width and
    half-height r x EXTENT[shape] (bar 2r x r, square 2r x 2r, pillar r x 2r)."""
    if shape not in EXTENT:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    ex, ey = EXTENT[shape]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    return (np.abs(xx - cx) <= r * ex) & (np.abs(yy - cy) <= r * ey)


def cell_centres(size: int = IMAGE_SIZE) -> list[tuple[float, float]]:
    """(cx, cy) of the GRID x GRID cells, row by row (y grows downwards)."""
    step = size / GRID
    return [((col + 0.5) * step, (row + 0.5) * step) for row in range(GRID) for col in range(GRID)]


def object_radius(size: int = IMAGE_SIZE) -> float:
    """Every object's half-size: the largest that keeps GAP px between neighbouring cells' boxes
    (6.5 px at 32: a 13 x 13 square, a 13 x 6.5 bar)."""
    r = math.floor(size / GRID - GAP) / 2  # whole px boxes: 6.5 at 32, 10.5 at 48
    if r < MIN_RADIUS:
        raise ValueError(f"a {size} px canvas gives objects of half-size {r:.2f} px, under {MIN_RADIUS:g}: use >= 32 px")
    return r


def _separated(a: Placed, b: Placed) -> bool:
    """Bounding boxes at least GAP px apart along x or along y (so never overlapping)."""
    reach = a.r + b.r + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def satisfies(a: Placed, b: Placed, relation: str) -> bool:
    """The renderer's (strict) form of "a <relation> b": apart along the relation's axis by at least
    both half-sizes + GAP, and off that axis by at most half as much. y grows downwards."""
    dx, dy = b.cx - a.cx, b.cy - a.cy  # from a to b
    along, across = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along >= a.r + b.r + GAP and abs(across) <= along / 2


def layout(objects: Sequence[Obj], rng: random.Random, size: int = IMAGE_SIZE, relation: str | None = None) -> list[Placed]:
    """Each object (an Obj expands to `count` copies; a colour-free Obj gets a random palette colour
    per copy) centred in its own cell of the GRID x GRID layout, cells drawn at random, every object
    of half-size object_radius(size). With a relation, objects[0] and objects[1] (one each) take a
    pair of cells that stands in it (`satisfies`), drawn from all such pairs."""
    colors = list(COLORS)
    items = [(o.shape, o.color or rng.choice(colors)) for o in objects for _ in range(o.count)]
    if not items:
        return []
    if len(items) > GRID * GRID:
        raise ValueError(f"{len(items)} objects do not fit the {GRID} x {GRID} cells")
    r, centres = object_radius(size), cell_centres(size)
    if relation is None:
        cells = rng.sample(range(len(centres)), len(items))
    else:
        if len(items) != 2:
            raise ValueError("a relation places exactly two objects")
        at = [Placed("square", "red", cx, cy, r) for cx, cy in centres]
        pairs = [(i, j) for i in range(len(at)) for j in range(len(at)) if i != j and satisfies(at[i], at[j], relation)]
        cells = list(rng.choice(pairs))
    return [Placed(shape, color, *centres[c], r) for (shape, color), c in zip(items, cells, strict=True)]


def draw(placed: Sequence[Placed], size: int = IMAGE_SIZE) -> np.ndarray:
    """Float32 [3, size, size] in [0, 1]: the objects on the background, flat colours."""
    img = np.empty((3, size, size), dtype=np.float32)
    img[:] = np.asarray(BACKGROUND, dtype=np.float32)[:, None, None]
    for p in placed:
        mask = shape_mask(p.shape, p.cx, p.cy, p.r, size)
        img[:, mask] = np.asarray(COLORS[p.color], dtype=np.float32)[:, None]
    return img


def render_objects(
    objects: Sequence[Obj], rng: random.Random | int, size: int = IMAGE_SIZE, relation: str | None = None
) -> np.ndarray:
    """draw(layout(...)) for any list of objects, grammatical or not: counterfactual images (a
    count off by one, two objects of one shape) are rendered by the same code as the world's."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    return draw(layout(objects, rng, size, relation), size)


def render(spec: Spec, rng: random.Random | int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Float32 [3, size, size] in [0, 1] that satisfies spec; deterministic given the rng/seed."""
    return render_objects(spec.objects, rng, size, spec.relation)


def render_batch(specs: Sequence[Spec], seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """[B, 3, size, size] renderings of specs, deterministic given seed."""
    rng = random.Random(seed)
    return torch.from_numpy(np.stack([render(s, rng, size) for s in specs]))


def sample_specs(split: str, batch_size: int, rng: random.Random, balanced: bool = True) -> list[Spec]:
    """batch_size specs of a split, with replacement. balanced=True draws a category uniformly
    (among those the split has), then a spec of it: position prompts outnumber the others 5 to
    1 and more, and a uniform draw would leave single_object nearly unseen."""
    pool = split_specs(split)
    if not balanced:
        return [rng.choice(pool) for _ in range(batch_size)]
    by_cat: dict[str, list[Spec]] = {}
    for s in pool:
        by_cat.setdefault(s.category, []).append(s)
    cats = list(by_cat)
    return [rng.choice(by_cat[rng.choice(cats)]) for _ in range(batch_size)]


def mirrored(spec: Spec) -> Spec:
    """The position spec with its relation's mirror ("left of" <-> "right of", "above" <-> "below")."""
    return replace(spec, relation=MIRROR[spec.relation])


def vocabulary() -> list[str]:
    """Every word of the world's prompts (for a text encoder's table)."""
    return sorted({w for s in all_specs() for w in s.prompt.split()})
