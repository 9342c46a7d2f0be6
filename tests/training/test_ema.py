"""flowrl.training.ema: the EMA of the trainable weights (Flow-GRPO's), worked by hand."""

import pytest
import torch


def test_ema_update_and_swap_hand_worked():
    # decay 0.9: shadow starts at theta_0 = 1; theta becomes 2 -> shadow = 0.9 * 1 + 0.1 * 2 = 1.1;
    # a second update at theta = 2 -> 0.9 * 1.1 + 0.2 = 1.19.
    from flowrl.training.ema import EMA

    p = torch.nn.Parameter(torch.tensor([1.0]))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(2.0)
    ema.update()
    assert ema.shadow[0].item() == pytest.approx(1.1)
    ema.update()
    assert ema.shadow[0].item() == pytest.approx(1.19)
    with ema.swapped_in():
        assert p.item() == pytest.approx(1.19)
    assert p.item() == 2.0  # the live weights come back
    with pytest.raises(ValueError, match="decay"):
        EMA([p], decay=1.0)
    # flow_grpo/ema.py: every 2nd optimizer step, decay min((1 + s) / (10 + s), 0.9) at step s.
    # Step 0: skipped; step 1: d = 2 / 11 -> shadow = 2/11 * 1 + 9/11 * 3 = 2.636364.
    q = torch.nn.Parameter(torch.tensor([1.0]))
    warm = EMA([q], decay=0.9, every=2, warmup=True)
    with torch.no_grad():
        q.fill_(3.0)
    warm.update(0)
    assert warm.shadow[0].item() == 1.0
    warm.update(1)
    assert warm.shadow[0].item() == pytest.approx(2 / 11 + 27 / 11)
    assert warm.decay_at(1000) == 0.9
