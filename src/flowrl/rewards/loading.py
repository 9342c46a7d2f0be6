"""What the reward loaders for real checkpoints share: device / dtype resolution, batching, and
one-line errors for a missing or a wrong checkpoint file.

Order of work in every loader: check the files exist (`flowrl.config.errors.require_path`, cheap), then
import open_clip / transformers (seconds), then read the weights (gigabytes). A missing file is
a `CheckpointNotFound`; a file that exists but is not what the loader expects (unreadable, keys
of another model, tensors of other shapes) is a `CheckpointFormatError`. Both are
`UserFacingError`s: one line, naming the file and where the right one is published.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from flowrl.config.errors import UserFacingError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPES |= {"float16": torch.float16, "fp16": torch.float16}


class CheckpointFormatError(UserFacingError):
    """A checkpoint file exists but does not hold the model the loader expects."""

    def __init__(self, what: str, path: str | Path, problem: str, where: str):
        problem = " ".join(str(problem).split())  # one line, whatever the underlying error printed
        super().__init__(f"{what} checkpoint {path} is not the expected file: {problem} (the right one: {where})")
        self.path = path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) = cuda if available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' (or None) = bfloat16 on CUDA, float32 elsewhere (bf16 matmuls on CPU are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"reward dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def in_batches(
    fn: Callable[[torch.Tensor, list[str]], torch.Tensor],
    images: torch.Tensor,
    prompts: list[str],
    batch_size: int | None,
) -> torch.Tensor:
    """fn over consecutive chunks of at most batch_size rows (None or <= 0: one call), concatenated."""
    n = images.shape[0]
    if not batch_size or batch_size <= 0 or n <= batch_size:
        return fn(images, prompts)
    return torch.cat([fn(images[i : i + batch_size], prompts[i : i + batch_size]) for i in range(0, n, batch_size)])


def load_weights_file(path: Path, what: str, where: str) -> dict[str, torch.Tensor]:
    """A .pt / .bin / .pth (tensors only: weights_only) or .safetensors file -> its state dict.
    A {'state_dict': ...} or {'model': ...} wrapper is unwrapped. Anything else is a
    CheckpointFormatError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip, or weights_only refusals all land here
        raise CheckpointFormatError(what, path, f"could not be read ({type(err).__name__}: {_first_line(err)})", where) from err
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(what, path, "it does not hold a state dict of tensors", where)
    return obj


def describe_mismatch(
    expected: Mapping[str, torch.Size | tuple], found: Mapping[str, torch.Tensor | torch.Size | tuple], examples: int = 2
) -> str | None:
    """One line on how `found` (name -> tensor or shape) differs from `expected` (name -> shape):
    missing names, unexpected names, shape mismatches, a few examples of each. None if it fits."""

    def shape(v) -> tuple:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if shape(expected[k]) != shape(found[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {len(expected)} expected tensors missing (e.g. {', '.join(missing[:examples])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:examples])})")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of another shape (e.g. {k}: {list(shape(found[k]))} in the file, {list(shape(expected[k]))} expected)"
        )
    return "; ".join(parts) or None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
