import os

# Nothing in the suite may touch a hub (non-negotiable 2): set before any HF import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """The shipped tiny FLUX model, loaded once per session."""
    from flowrl.models.tiny_flux import TinyFluxModel

    return TinyFluxModel.from_pretrained()


@pytest.fixture(scope="session")
def tiny_clip():
    from flowrl.rewards.clip import TinyClipReward

    return TinyClipReward()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
