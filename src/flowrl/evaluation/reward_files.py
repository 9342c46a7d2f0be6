"""The real rewards' files checked without importing torch, so that a protocol whose reward
checkpoint is missing fails in about a second (importing torch alone takes 2-3 s on a busy machine),
with the loader's own line: `CheckpointNotFound(what, path, where, hint)` built from the constants
of the reward's module (its `*_WHERE` / `*_HINT`, read from the source by `ast`, not imported). The
loaders still check for themselves; this only comes first. A reward not listed here is left to
its loader.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REWARDS_DIR = Path(__file__).resolve().parent.parent / "rewards"

# reward class -> (config key, what, the module's WHERE constant, its HINT constant, file | dir[, text
# the loader adds to WHERE]), in the order the loader checks them
FILES = {
    "flowrl.rewards.hps.HPSReward": [("checkpoint", "HPS v2.1", "HPS_WHERE", "HPS_HINT", "file")],
    "flowrl.rewards.clipscore.ClipScoreReward": [("checkpoint", "CLIP score (open_clip)", "CLIP_WHERE", "CLIP_HINT", "file")],
    "flowrl.rewards.aesthetic.AestheticReward": [
        ("checkpoint", "LAION aesthetic predictor", "AESTHETIC_WHERE", "AESTHETIC_HINT", "file"),
        ("clip_checkpoint", "CLIP ViT-L/14 (aesthetic)", "CLIP_L14_WHERE", "CLIP_L14_HINT", "file"),
    ],
    "flowrl.rewards.pickscore.PickScoreReward": [("checkpoint", "PickScore v1", "PICK_WHERE", "PICK_HINT", "dir")],
    "flowrl.rewards.imagereward.ImageRewardModel": [
        ("checkpoint", "ImageReward", "IR_WHERE", "IR_HINT", "file", ", file ImageReward.pt"),
        ("tokenizer", "ImageReward tokenizer (bert-base-uncased)", "TOK_WHERE", "TOK_HINT", "dir"),
    ],
}


@functools.cache
def module_constants(module: str) -> dict[str, str]:
    """The module-level string constants of flowrl/rewards/<module>.py (NAME = "..." or a
    parenthesised concatenation), read from its source."""
    tree = ast.parse((REWARDS_DIR / f"{module}.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, str):
                out[node.targets[0].id] = value
    return out


def check_reward_files(rewards) -> None:
    """Raise the loader's CheckpointNotFound for the first missing file of any reward in `rewards`
    ({name: reward config node}, a multi reward's parts included)."""
    from flowrl.config.errors import require_path

    for node in (rewards or {}).values():
        if node is None or not hasattr(node, "get"):
            continue
        check_reward_files(node.get("rewards"))  # a multi reward's parts
        target = str(node.get("_target_", ""))
        for key, what, where, hint, kind, *suffix in FILES.get(target, []):
            constants = module_constants(target.split(".")[2])
            where_text = constants.get(where, "") + "".join(suffix)
            require_path(what, node.get(key), where_text, constants.get(hint, ""), kind=kind)
