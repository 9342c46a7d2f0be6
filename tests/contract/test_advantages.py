"""flowrl.contract.advantages: group normalisation and the branch-group advantages of anchor plans
(G²RPO's MGAI), worked by hand."""

import torch

from flowrl.contract import branch_group_advantages, group_normalize


def test_group_normalize_unbiased_hand_worked():
    # DanceGRPO / E-GRPO / G²RPO: torch's default unbiased std + 1e-8 (train_grpo_flux.py,
    # rollout_buffer.py, train_g2rpo_hps.py). r = [1, 2, 3, 6]: mean 3, sample var 14 / 3,
    # std 2.160247 -> [-0.92582, -0.46291, 0, 1.38873].
    adv = group_normalize(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-0.92582, -0.46291, 0.0, 1.38873]]), atol=1e-5, rtol=0)


def test_group_normalize_population_hand_worked():
    # Flow-GRPO's stat tracker (numpy std, ddof 0): population var 14 / 4 = 3.5, std 1.870829,
    # + 1e-4 -> [-1.06904, -0.53452, 0, 1.60356] (to 1e-4 relative).
    adv = group_normalize(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), unbiased=False, eps=1e-4)
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0]]) / (1.8708287 + 1e-4)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_identical_rewards_give_zero_advantage_not_nan():
    # Peers' known failure: a group with identical rewards (e.g. identical noise) -> 0/0.
    for unbiased in (True, False):
        assert torch.equal(group_normalize(torch.full((2, 5), 0.7), unbiased=unbiased), torch.zeros(2, 5))


def test_mgai_sums_per_granularity_group_advantages():
    # One prompt, G = 2, one branch, two granularities:
    #   g=1 rewards [1, 3] -> z = [-1, 1];  g=2 rewards [5, 4] -> z = [1, -1]  -> sum [0, 0]
    # A sample that looks better at one granularity and worse at the other gets no credit.
    # (unbiased std of a pair: |a - b| / sqrt(2), so each pair normalises to -+0.70711)
    r = torch.tensor([[[[1.0, 5.0]], [[3.0, 4.0]]]])  # [P=1, G=2, B=1, C=2]
    torch.testing.assert_close(branch_group_advantages(r), torch.zeros(1, 2, 1))
    r2 = torch.tensor([[[[1.0, 4.0]], [[3.0, 5.0]]]])  # consistent: both granularities prefer sample 1
    torch.testing.assert_close(branch_group_advantages(r2), torch.tensor([[[-1.41421], [1.41421]]]), atol=1e-5, rtol=0)
