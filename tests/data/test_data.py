import random

import numpy as np
import pytest

from flowrl.data.prompts import PromptData, file_prompts, read_prompt_file, shapes_prompts
from flowrl.data.shapes import COLORS, SHAPES, all_specs, parse_prompt, render_batch, sample_specs, shape_mask, split_specs


def test_splits_partition_all_combinations():
    # 6 colors x 3 shapes x 5 other colors = 90 prompts; every 5th held out -> 72 / 18.
    train, held = split_specs("train"), split_specs("heldout")
    assert len(all_specs()) == 90 and len(train) == 72 and len(held) == 18
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(all_specs())


def test_every_word_in_every_role_in_both_splits():
    # A split rule aligned with the 5-background blocks of all_specs() would hold out one
    # background color entirely (it did once): check fg, bg and shape coverage per split.
    for split in ("train", "heldout"):
        specs = split_specs(split)
        assert {s.fg for s in specs} == set(COLORS), split
        assert {s.bg for s in specs} == set(COLORS), split
        assert {s.shape for s in specs} == set(SHAPES), split


def test_parse_prompt_roundtrip_and_errors():
    for spec in all_specs():
        assert parse_prompt(spec.prompt) == spec
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        parse_prompt("a pink circle on a blue background")
    with pytest.raises(ValueError, match="not a synthetic shapes prompt"):
        parse_prompt("a photo of a cat")


def test_render_is_deterministic_and_in_range():
    specs = split_specs("train")[:8]
    a, b = render_batch(specs, seed=3), render_batch(specs, seed=3)
    assert a.shape == (8, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert (a == b).all()
    assert not (render_batch(specs, seed=4) == a).all()


def test_fill_ratios_separate_shapes():
    # Large shapes, centred: fill = area / bbox -> square 1, circle ~pi/4 = 0.785, triangle ~1/2.
    ratios = {}
    for shape in SHAPES:
        m = shape_mask(shape, 16.0, 16.0, 10.0)
        rows, cols = m.nonzero()
        ratios[shape] = m.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    assert ratios["square"] == pytest.approx(1.0)
    assert ratios["circle"] == pytest.approx(3.14159 / 4, abs=0.03)
    assert ratios["triangle"] == pytest.approx(0.5, abs=0.06)


def test_sample_specs_distinct():
    rng = random.Random(0)
    batch = sample_specs("all", 90, rng, distinct=True)
    assert len(set(batch)) == 90
    with pytest.raises(ValueError):
        sample_specs("heldout", 19, rng, distinct=True)


def test_prompt_data(tmp_path):
    d = shapes_prompts()
    assert len(d.train) == 72 and len(d.val) == 18
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  a dog  \n")
    assert read_prompt_file(f) == ["a cat", "a dog"]
    assert file_prompts(str(f), str(f)).val == ["a cat", "a dog"]
    from flowrl.config.errors import ConfigError

    with pytest.raises(ConfigError, match="prompt file=.*not found"):
        read_prompt_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="train set is empty"):
        PromptData(train=[], val=["x"])


def test_evenly_spaced_picks_items_at_i_times_len_over_n():
    # worked by hand: 10 items, n 4 -> positions 0, 10//4=2, 20//4=5, 30//4=7
    from flowrl.data.prompts import evenly_spaced

    items = list("abcdefghij")
    assert evenly_spaced(items, 4) == ["a", "c", "f", "h"]
    assert evenly_spaced(items, 10) == items and evenly_spaced(items, 99) == items
    assert evenly_spaced(items, 1) == ["a"] and evenly_spaced(items, 0) == []
