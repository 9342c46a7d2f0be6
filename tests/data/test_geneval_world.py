"""The compositional world (flowrl.data.geneval): grammar, parse, splits by composition, renderer."""

import itertools
import random
from collections import Counter

import numpy as np
import pytest
import torch

from flowrl.data import geneval as g
from flowrl.data.geneval import (
    CATEGORIES,
    COLORS,
    HELDOUT_BINDINGS,
    HELDOUT_COUNTS,
    HELDOUT_RELATIONS,
    NUMBERS,
    RELATIONS,
    SHAPES,
    Obj,
    Spec,
    all_specs,
    compositions,
    heldout_compositions,
    layout,
    parse,
    render,
    render_batch,
    sample_specs,
    satisfies,
    split_specs,
)
from flowrl.data.prompts import PromptData

SIZES = {"single_object": 3, "two_object": 6, "counting": 72, "colors": 18, "position": 864, "color_attr": 180}


def _words(specs) -> set[str]:
    return {w for s in specs for w in s.prompt.split()}


def test_world_sizes_and_prompt_length():
    # 3 shapes, 6 ordered shape pairs, 4 counts x 18 bindings, 18 bindings, 4 relations x 6 pairs
    # x 36 colour pairs, 6 pairs x 30 colour pairs with different colours.
    specs = all_specs()
    assert Counter(s.category for s in specs) == SIZES
    assert len({s.prompt for s in specs}) == len(specs) == 1143  # no two specs share a text
    from flowrl.models.tiny_flux import TinyFluxConfig

    assert max(len(s.prompt.split()) for s in specs) <= TinyFluxConfig().max_text_len
    assert len(g.vocabulary()) == 23


def test_prompt_texts():
    assert Spec("single_object", (Obj("bar"),)).prompt == "a bar"
    assert Spec("two_object", (Obj("bar"), Obj("square"))).prompt == "a bar and a square"
    assert Spec("counting", (Obj("pillar", "green", 3),)).prompt == "three green pillars"
    assert Spec("counting", (Obj("pillar", "green", 1),)).prompt == "one green pillar"
    assert Spec("colors", (Obj("square", "purple"),)).prompt == "a purple square"
    pos = Spec("position", (Obj("bar", "red"), Obj("square", "blue")), "left of")
    assert pos.prompt == "a red bar left of a blue square"
    assert Spec("color_attr", (Obj("bar", "red"), Obj("square", "blue"))).prompt == "a red bar and a blue square"


def test_parse_inverts_prompt_for_every_spec():
    for spec in all_specs():
        assert parse(spec.prompt) == spec
    assert parse("  Three GREEN pillars ") == Spec("counting", (Obj("pillar", "green", 3),))


@pytest.mark.parametrize(
    "prompt",
    [
        "a photo of a cat",
        "a pink bar",  # unknown colour
        "two red bar",  # a count above one takes the plural
        "one red bars",
        "five red bars",
        "a bar and a bar",  # two_object names two different shapes
        "a red bar and a red square",  # color_attr names two different colours
        "a red bar left of a blue bar",  # position names two different shapes
        "a red bar near a blue square",
        "a red bar on a blue background",  # the shapes world's grammar
        "",
    ],
)
def test_parse_rejects_text_outside_the_grammar(prompt):
    with pytest.raises(ValueError, match="not a prompt of the geneval world"):
        parse(prompt)


def test_spec_checks_its_category():
    with pytest.raises(ValueError, match="count 5"):
        Spec("counting", (Obj("bar", "red", 5),))
    with pytest.raises(ValueError, match="colour"):
        Spec("single_object", (Obj("bar", "red"),))
    with pytest.raises(ValueError, match="relation"):
        Spec("color_attr", (Obj("bar", "red"), Obj("square", "blue")), "above")
    with pytest.raises(ValueError, match="unknown category"):
        Spec("spatial", (Obj("bar"),))


def test_splits_partition_the_world():
    train, held = split_specs("train"), split_specs("heldout")
    assert len(train) == 593 and len(held) == 550
    assert not set(train) & set(held) and set(train) | set(held) == set(all_specs())
    assert Counter(s.category for s in held) == {"counting": 27, "colors": 3, "position": 444, "color_attr": 76}
    # single_object and two_object have no composition to hold out: train only
    assert {s.category for s in train} == set(CATEGORIES)
    assert split_specs("heldout", ["single_object", "two_object"]) == []
    with pytest.raises(ValueError, match="split must be"):
        split_specs("val")
    with pytest.raises(ValueError, match="unknown categories"):
        split_specs("train", ["spatial"])


def _shown(spec: Spec) -> set[tuple]:
    """The test's own reading of what a prompt shows (independent of g.compositions): each named
    colour-shape binding, a count of a shape, a spatial triple, and two bindings in one image."""
    objs = spec.objects
    out = {("binding", o.color, o.shape) for o in objs if o.color}
    if spec.category == "counting":
        out.add(("count", objs[0].count, objs[0].shape))
    if spec.relation:
        out.add(("relation", objs[0].shape, spec.relation, objs[1].shape))
    if len(objs) == 2 and objs[0].color:
        out.add(("pairing", *sorted([(objs[0].color, objs[0].shape), (objs[1].color, objs[1].shape)])))
    return out


def test_split_is_by_composition():
    held_out = heldout_compositions()
    assert all(compositions(s) == _shown(s) for s in all_specs())
    train, held = split_specs("train"), split_specs("heldout")
    shown = set().union(*(_shown(s) for s in train))
    assert not shown & held_out  # no train prompt shows a held-out combination
    assert all(_shown(s) & held_out for s in held)  # every held-out prompt shows one
    # ... of each kind: bindings, counts, spatial triples and pairings are all exercised
    kinds = {c[0] for s in held for c in _shown(s) & held_out}
    assert kinds == {"binding", "count", "relation", "pairing"}
    # the held-out constants are held out wherever they occur
    for s in train:
        assert not any((o.color, o.shape) in HELDOUT_BINDINGS for o in s.objects)
        if s.category == "counting":
            assert (s.objects[0].count, s.objects[0].shape) not in HELDOUT_COUNTS
        if s.relation:
            assert (s.objects[0].shape, s.relation, s.objects[1].shape) not in HELDOUT_RELATIONS
    # every word, in both splits
    assert _words(train) == _words(held) | {"a", "and"} == set(g.vocabulary())
    assert _words(held) >= set(COLORS) | set(SHAPES) | set(NUMBERS[1:]) | {"left", "right", "above", "below", "of"}


def test_heldout_combinations_recombine_seen_parts():
    # What is new in a held-out prompt is the combination: each part is shown in train.
    train = split_specs("train")
    shown = set().union(*(_shown(s) for s in train))
    colored = [s for s in train if s.category in ("counting", "colors", "position", "color_attr")]
    for color, shape in HELDOUT_BINDINGS:  # the colour on other shapes, the shape in other colours
        assert any(("binding", color, other) in shown for other in SHAPES if other != shape)
        assert any(("binding", other, shape) in shown for other in COLORS if other != color)
    for n, shape in HELDOUT_COUNTS:  # the number with other shapes, the shape in other numbers
        assert any(("count", n, other) in shown for other in SHAPES if other != shape)
        assert any(("count", m, shape) in shown for m in range(1, 5) if m != n)
    for a, rel, b in HELDOUT_RELATIONS:  # the relation between other shapes, the pair in other relations
        assert any(("relation", x, rel, y) in shown for x, y in itertools.permutations(SHAPES, 2) if (x, y) != (a, b))
        assert any(("relation", a, other, b) in shown for other in RELATIONS if other != rel)
    train_bindings = {c[1:] for c in shown if c[0] == "binding"}
    assert len(train_bindings) == 18 - len(HELDOUT_BINDINGS) and colored
    held_pairings = [c for c in heldout_compositions() if c[0] == "pairing" and {c[1], c[2]} <= train_bindings]
    assert len(held_pairings) == 12  # pairings of two train bindings that no train image shows together
    for _, a, b in held_pairings:
        assert ("binding", *a) in shown and ("binding", *b) in shown


def test_prompts_factory_and_config(make_cfg):
    from hydra.utils import instantiate

    data = instantiate(make_cfg("data=geneval", "data.balanced=false", "data.val_per_category=null").data)
    assert isinstance(data, PromptData)
    assert data.train == [s.prompt for s in split_specs("train")]
    assert data.val == [s.prompt for s in split_specs("heldout")]
    default = instantiate(make_cfg().data)  # the default world: balanced stream, 128 held-out entries a category
    assert len(default.val) == 4 * 128 and set(default.train) == set(data.train)
    only = g.prompts(categories=["position"])
    assert len(only.train) == 420 and len(only.val) == 444
    assert all(parse(p).category == "position" for p in only.train + only.val)


def test_render_is_deterministic_flat_and_in_range():
    specs = split_specs("all")[::37]
    a, b = render_batch(specs, seed=3), render_batch(specs, seed=3)
    assert a.shape == (len(specs), 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(render_batch(specs, seed=4), a)
    assert np.array_equal(render(specs[0], 5), render(specs[0], random.Random(5)))
    # every pixel is exactly the background or a palette colour: no antialiasing
    palette = torch.tensor([g.BACKGROUND, *COLORS.values()])
    px = a.permute(0, 2, 3, 1).reshape(-1, 3)
    assert (px[:, None, :] == palette[None]).all(-1).any(-1).all()
    assert not (palette[1:] == torch.tensor(g.BACKGROUND)).all(-1).any()  # background is no object colour


def _check_layout(placed, n, size, relation=None):
    assert len(placed) == n
    for p in placed:
        assert p.r >= g.MIN_RADIUS and p.r + 1 <= p.cx <= size - p.r - 1 and p.r + 1 <= p.cy <= size - p.r - 1
    for a, b in itertools.combinations(placed, 2):
        assert g._separated(a, b)
    if relation is not None:
        assert satisfies(placed[0], placed[1], relation)


def test_layout_separates_objects_and_keeps_the_relation():
    rng = random.Random(0)
    for spec in all_specs():
        n = sum(o.count for o in spec.objects)
        for size in (32, 48, 64):
            placed = layout(spec.objects, rng, size, spec.relation)
            _check_layout(placed, n, size, spec.relation)
            assert {(p.cx, p.cy) for p in placed} <= set(g.cell_centres(size))  # one cell each
    # every pair of cells that stands in a relation is drawn (4 relations, 2 x 2 cells)
    for rel in RELATIONS:
        seen = {
            tuple((p.cx, p.cy) for p in layout([Obj("bar", "red"), Obj("square", "blue")], random.Random(i), 32, rel))
            for i in range(400)
        }
        centres = g.cell_centres(32)
        r = g.object_radius(32)
        expected = {
            (centres[i], centres[j])
            for i in range(4)
            for j in range(4)
            if i != j and satisfies(g.Placed("bar", "red", *centres[i], r), g.Placed("square", "blue", *centres[j], r), rel)
        }
        # 'left of' (cells 16 px apart, r 6.5): the left cell of each row before its right one; a
        # diagonal pair is 16 px along and 16 across (> 16 / 2), so no relation: 2 pairs
        assert seen == expected and len(expected) == 2
    with pytest.raises(ValueError, match="do not fit"):
        layout([Obj("bar", "red", 5)], rng, 32)
    with pytest.raises(ValueError, match="use >= 32 px"):  # 8 px cells leave under MIN_RADIUS
        layout([Obj("bar", "red")], rng, 16)


def test_satisfies_is_strict_and_mirrored():
    a, b = g.Placed("bar", "red", 10, 24, 5), g.Placed("square", "blue", 30, 28, 5)
    assert satisfies(a, b, "left of") and satisfies(b, a, "right of")
    assert not satisfies(a, b, "right of") and not satisfies(a, b, "above") and not satisfies(a, b, "below")
    assert not satisfies(a, g.Placed("square", "blue", 22, 24, 5), "left of")  # boxes closer than GAP
    assert not satisfies(a, g.Placed("square", "blue", 30, 40, 5), "left of")  # too far off the axis


def test_colour_free_objects_get_random_colours():
    seen = Counter()
    for seed in range(60):
        seen.update(p.color for p in layout([Obj("bar"), Obj("square")], random.Random(seed)))
    assert set(seen) == set(COLORS)


def test_sample_specs_balances_categories():
    rng = random.Random(0)
    draws = sample_specs("all", 6000, rng)
    counts = Counter(s.category for s in draws)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) > 850  # ~1000 each
    held = sample_specs("heldout", 400, rng)
    assert {s.category for s in held} == {"counting", "colors", "position", "color_attr"}
    assert set(held) <= set(split_specs("heldout"))
    uniform = Counter(s.category for s in sample_specs("all", 2000, rng, balanced=False))
    assert uniform["position"] > 1300  # 864 of 1143 prompts


def test_balanced_train_stream_and_equal_held_out_entries_per_category():
    from flowrl.data.geneval import parse, per_category, prompts

    d = prompts(balanced=True, val_per_category=128)
    train = Counter(parse(p).category for p in d.train)
    # each category's prompts repeated round(420 / n) times: 3 x 140, 6 x 70, 45 x 9, 15 x 28, 420 x 1, 104 x 4
    assert train == {"single_object": 420, "two_object": 420, "counting": 405, "colors": 420, "position": 420, "color_attr": 416}
    assert set(d.train) == {s.prompt for s in split_specs("train")}  # every train prompt, no held-out one
    val = Counter(parse(p).category for p in d.val)
    assert val == {"counting": 128, "colors": 128, "position": 128, "color_attr": 128}
    held = split_specs("heldout")
    colors = [s.prompt for s in held if s.category == "colors"]
    assert per_category([s for s in held if s.category == "colors"], 7) == (colors * 3)[:7]  # cycled in order
    position = [s.prompt for s in held if s.category == "position"]
    assert per_category([s for s in held if s.category == "position"], 4) == position[::111]  # 444 / 4, evenly spaced
    plain = prompts()
    assert plain.val == [s.prompt for s in held] and plain.train == [s.prompt for s in split_specs("train")]
