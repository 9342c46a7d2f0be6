"""flowrl.engine.noise: the rollout's default noise source draws exactly what the engine drew before
noise sources existed (the same torch.Generator calls in the same order and shapes), so a seed, a
checkpoint's RNG state and a recorded result give the same rollout as before; an injected source is
all the engine draws from."""

import pytest
import torch

from flowrl.config.compose import config_options
from flowrl.engine.noise import GeneratorNoise, NoiseSource
from flowrl.engine.rollout import rollout

PROMPTS = ["a red circle on a blue background", "a white square on a green background"]


@pytest.fixture(scope="module")
def model():
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    torch.manual_seed(0)
    return TinyFluxModel(TinyFluxConfig(num_layers=1, num_single_layers=1, image_size=16)).eval()


def _plan(method: str):
    from hydra.utils import instantiate

    from flowrl.config.compose import compose

    sched = instantiate(compose([f"method={method}", "smoke=true"]).method.step_scheduler)
    return sched.plan(0, torch.Generator().manual_seed(0))


def _score(images, prompts):
    return {"bright": images.mean(dim=(1, 2, 3))}


class _Recorded:
    """The draws of the engine before noise sources, written out by hand in their order: "sde" plans
    model.initial_noise(P or P*G) (repeated over the group when it shares it), then
    randn([T, P*G, *latent]); "anchor" plans model.initial_noise(P), then randn([B, P*G, *latent])."""

    def __init__(self, model, plan, num_prompts: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        p, g = num_prompts, plan.group_size
        if plan.trajectory in ("sde", "final", "tree"):  # "final": the level columns' re-noising noise after x_1
            self.x1 = model.initial_noise(p if plan.same_initial_noise else p * g, gen)  # "tree": one root per prompt
            draws = plan.levels.count if plan.trajectory == "final" else plan.num_steps
            self.eps = torch.randn((draws, p * g, *model.latent_shape), generator=gen)
        else:
            self.x1 = model.initial_noise(p, gen)
            self.eps = torch.randn((len(plan.branches), p * g, *model.latent_shape), generator=gen)

    def initial(self, model, num_prompts, per_prompt):
        assert self.x1.shape[0] == num_prompts * per_prompt
        return self.x1

    def steps(self, model, starts, num_prompts, group_size):
        assert self.eps.shape[:2] == (len(starts), num_prompts * group_size)
        return self.eps


def _assert_same_rollout(a, b):
    assert a.nfe == b.nfe and a.forwards == b.forwards
    for ja, jb in zip(a.jump_sets, b.jump_sets, strict=True):
        assert (ja.start, ja.stop) == (jb.start, jb.stop)
        assert torch.equal(ja.x, jb.x) and torch.equal(ja.x_next, jb.x_next) and torch.equal(ja.log_prob, jb.log_prob)
    assert a.parts.keys() == b.parts.keys() and all(torch.equal(a.parts[k], b.parts[k]) for k in a.parts)
    assert torch.equal(a.images, b.images)
    for name in ("final", "level_noise"):  # "final" plans
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("method", config_options("method"))
def test_default_noise_is_the_old_draw_order(model, method):
    plan = _plan(method)
    default = rollout(model, plan, PROMPTS, _score, torch.Generator().manual_seed(5), max_batch=4)
    recorded = _Recorded(model, plan, len(PROMPTS), seed=5)
    old = rollout(model, plan, PROMPTS, _score, max_batch=4, noise=recorded)
    _assert_same_rollout(default, old)  # bit for bit
    # the recorded x_1 is what the rollout started from (the comparison is not vacuous)
    x1 = default.jump_sets[0].x if plan.jumps and plan.jumps[0].start == 0 else None
    if plan.trajectory == "final":  # the kept re-noising noise is the recorded one, row-major
        assert torch.equal(default.level_noise, recorded.eps.transpose(0, 1))
    if x1 is not None:
        want = (
            recorded.x1.repeat_interleave(plan.group_size, 0)
            if plan.trajectory == "sde" and plan.same_initial_noise
            else recorded.x1
        )
        assert torch.equal(x1, want)
    explicit = rollout(model, plan, PROMPTS, _score, max_batch=4, noise=GeneratorNoise(torch.Generator().manual_seed(5)))
    _assert_same_rollout(default, explicit)


def test_generator_noise_draws_in_the_old_calls():
    class Latent:
        latent_shape = (3, 2)
        device = torch.device("cpu")

        def initial_noise(self, n, generator):
            return torch.randn((n, *self.latent_shape), generator=generator)

    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    src = GeneratorNoise(a)
    assert isinstance(src, NoiseSource)
    assert torch.equal(src.initial(Latent(), 2, 3), torch.randn((6, 3, 2), generator=b))
    assert torch.equal(src.steps(Latent(), range(4), 2, 3), torch.randn((4, 6, 3, 2), generator=b))
    assert torch.equal(a.get_state(), b.get_state())  # nothing else drawn


def test_an_injected_source_is_the_only_randomness(model):
    plan = _plan("dancegrpo")
    noise = _Recorded(model, plan, len(PROMPTS), seed=7)
    torch.manual_seed(123)
    first = rollout(model, plan, PROMPTS, _score, max_batch=4, noise=noise)
    torch.manual_seed(456)  # the global RNG does not matter
    second = rollout(model, plan, PROMPTS, _score, max_batch=64, noise=noise)
    for ja, jb in zip(first.jump_sets, second.jump_sets):
        torch.testing.assert_close(ja.x_next, jb.x_next, rtol=1e-5, atol=1e-5)  # other batching, same samples
    with pytest.raises(ValueError, match="not both"):
        rollout(model, plan, PROMPTS, _score, torch.Generator(), noise=noise)
