import pytest
import torch

from flowrl.data.shapes import COLORS, ShapeSpec, all_specs, render_batch
from flowrl.rewards.jpeg import JpegCompressibilityReward
from flowrl.rewards.multi import MultiReward, batch_zscore
from flowrl.rewards.shapes import ShapesReward

PROMPT = "a red circle on a blue background"


def _prompts(specs):
    return [s.prompt for s in specs]


def test_shapes_exact_on_renderings():
    # The reward's definition: every rendering of the data set scores exactly 1.
    specs = [s for s in all_specs() for _ in range(5)]
    scores = ShapesReward()(render_batch(specs, seed=11), _prompts(specs))
    assert scores.shape == (450,)
    assert torch.equal(scores, torch.ones(450))


def test_shapes_penalises_each_wrong_attribute():
    # Render the prompt's image, then score it against prompts that differ in one, two or
    # three attributes: each wrong attribute costs exactly 1/3.
    img = render_batch([ShapeSpec("red", "circle", "blue")], seed=0).repeat(4, 1, 1, 1)
    prompts = [
        "a red circle on a blue background",  # all right        -> 3/3
        "a green circle on a blue background",  # fg wrong         -> 2/3
        "a red square on a blue background",  # shape wrong      -> 2/3
        "a green triangle on a white background",  # all three wrong  -> 0
    ]
    scores = ShapesReward()(img, prompts)
    torch.testing.assert_close(scores, torch.tensor([1.0, 2 / 3, 2 / 3, 0.0]))


def test_shapes_blank_image_gets_background_only():
    # A uniform blue canvas: bg right (1/3), nothing drawn -> fg and shape wrong.
    img = torch.tensor(COLORS["blue"]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    assert ShapesReward()(img, [PROMPT]).item() == pytest.approx(1 / 3)


def test_jpeg_prefers_flat_images():
    flat = torch.full((1, 3, 32, 32), 0.5)
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = JpegCompressibilityReward()
    flat_s, noisy_s = r(flat, ["x"]).item(), r(noisy, ["x"]).item()
    assert flat_s < 0 and noisy_s < flat_s  # minus kB: noise costs bytes
    with pytest.raises(ValueError):
        JpegCompressibilityReward(quality=0)


def test_reward_input_validation():
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        ShapesReward()(torch.zeros(2, 32, 32), [PROMPT, PROMPT])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        ShapesReward()(torch.zeros(2, 3, 32, 32), [PROMPT])


class _Const(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = torch.tensor(values)

    def forward(self, images, prompts):
        return self.values


def test_multi_is_weighted_sum_of_zscores():
    # a = [1, 2, 3]: mean 2, sample std 1 -> z = [-1, 0, 1]
    # b = [10, 10, 40]: mean 20, sample std sqrt(300) = 17.32 -> z = [-0.577, -0.577, 1.155]
    # 0.7 * z_a + 0.3 * z_b = [-0.8732, -0.1732, 1.0464]
    m = MultiReward({"a": _Const([1.0, 2.0, 3.0]), "b": _Const([10.0, 10.0, 40.0])}, {"a": 0.7, "b": 0.3})
    out = m(torch.zeros(3, 3, 4, 4), ["p"] * 3)
    torch.testing.assert_close(out, torch.tensor([-0.8732, -0.1732, 1.0464]), atol=1e-4, rtol=0)
    assert set(m.components(torch.zeros(3, 3, 4, 4), ["p"] * 3)) == {"a", "b"}
    raw = MultiReward({"a": _Const([1.0, 2.0, 3.0])}, {"a": 2.0}, normalize="none")
    torch.testing.assert_close(raw(torch.zeros(3, 3, 4, 4), ["p"] * 3), torch.tensor([2.0, 4.0, 6.0]))


def test_multi_validation_and_constant_batch():
    assert torch.equal(batch_zscore(torch.tensor([5.0, 5.0])), torch.zeros(2))
    assert torch.equal(batch_zscore(torch.tensor([5.0])), torch.zeros(1))
    with pytest.raises(ValueError, match="must name exactly"):
        MultiReward({"a": _Const([1.0])}, {"b": 1.0})
    with pytest.raises(ValueError, match="normalize"):
        MultiReward({"a": _Const([1.0])}, {"a": 1.0}, normalize="rank")
