"""LoRA on a diffusers transformer via peft: add, save (diffusers format), load, disable.

Small functions over the diffusers `PeftAdapterMixin` API that every diffusers transformer
(FluxTransformer2DModel, SD3Transformer2DModel, the tiny model's transformer) has:
- `add_lora` freezes the base weights and injects one adapter named "default"; only the
  `lora_A` / `lora_B` weights train (kept in fp32 even when the base is bf16).
- `save_lora` writes `pytorch_lora_weights.safetensors` with the pipeline's own
  `save_lora_weights` classmethod (keys `transformer.<module>.lora_A.weight`, the LoraConfig in
  the safetensors metadata, so rank/alpha survive), so `FluxPipeline.load_lora_weights(dir)` /
  `StableDiffusion3Pipeline.load_lora_weights(dir)` load it as is.
- `reference_policy(transformer)` disables the adapter for the block: the base model is the
  reference policy of the KL term (Flow-GRPO), with no second copy of the weights.
peft (~8 s to import) is imported only inside these functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from torch import nn

ADAPTER = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# The attention projections of every FLUX / SD3 joint-attention block (DanceGRPO, Flow-GRPO).
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_options(lora) -> dict | None:
    """A `model.lora` config node (dict / DictConfig / None) -> plain kwargs for `add_lora`."""
    if lora is None or lora is False:
        return None
    if not isinstance(lora, Mapping):
        raise TypeError(f"model.lora must be a mapping {{rank, alpha, target_modules}} or null, got {lora!r}")
    opts = dict(lora)
    unknown = set(opts) - {"rank", "alpha", "target_modules", "init", "dropout"}
    if unknown:
        raise ValueError(f"unknown model.lora keys {sorted(unknown)}; expected rank, alpha, target_modules, init, dropout")
    if opts.get("target_modules") is not None:
        opts["target_modules"] = [str(m) for m in opts["target_modules"]]
    return opts


def add_lora(
    transformer: nn.Module,
    rank: int = 128,
    alpha: float = 256,
    target_modules=ATTENTION_TARGETS,
    init: bool | str = True,
    dropout: float = 0.0,
) -> nn.Module:
    """Freeze `transformer` and inject a LoRA adapter (scale alpha / rank) on `target_modules`.

    init=True: peft's default (A Kaiming-uniform, B zero), so the adapted model starts exactly at
    the base model and the first GRPO ratio is 1. Returns the same module, modified in place.
    """
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        init_lora_weights=init,
        target_modules=list(target_modules or ATTENTION_TARGETS),
    )
    transformer.add_adapter(config, adapter_name=ADAPTER)
    _train_lora_in_fp32(transformer)
    return transformer


def load_lora(transformer: nn.Module, lora_dir: str | Path, trainable: bool = True) -> nn.Module:
    """Attach the adapter saved by `save_lora` (or any diffusers transformer LoRA) as "default".
    `lora_dir` may also be the .safetensors file itself (any name: flowrl.evaluate's checkpoint=<file>)."""
    transformer.requires_grad_(False)
    path = Path(lora_dir)
    folder, weight_name = (path.parent, path.name) if path.is_file() else (path, LORA_WEIGHT_NAME)
    transformer.load_lora_adapter(str(folder), prefix="transformer", adapter_name=ADAPTER, weight_name=weight_name)
    if trainable:
        _train_lora_in_fp32(transformer)
    return transformer


def _train_lora_in_fp32(transformer: nn.Module) -> None:
    # Optimizer state and small updates of the adapter need fp32 (a bf16 weight rounds away
    # updates below ~0.4% of its size); peft casts activations to the adapter's dtype and back.
    for p in lora_parameters(transformer):
        p.data = p.data.float()
        p.requires_grad_(True)


def has_lora(module: nn.Module) -> bool:
    """Whether a peft LoRA adapter is attached anywhere in `module` (no peft import)."""
    return bool(getattr(module, "_hf_peft_config_loaded", False)) or any(
        "lora_A" in name for name, _ in module.named_parameters()
    )


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter weights (lora_A / lora_B) of `module`, in registration order."""
    return [p for name, p in module.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def save_lora(transformer: nn.Module, out_dir: str | Path, pipeline_cls) -> Path:
    """Write the adapter as `<out_dir>/pytorch_lora_weights.safetensors`, loadable by
    `pipeline_cls.load_lora_weights(out_dir)` (FluxPipeline, StableDiffusion3Pipeline, ...)."""
    from peft.utils import get_peft_model_state_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}
    pipeline_cls.save_lora_weights(
        out_dir,
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=transformer.peft_config[ADAPTER].to_dict(),
    )
    return out_dir / LORA_WEIGHT_NAME


@contextmanager
def reference_policy(transformer: nn.Module) -> Iterator[None]:
    """Within the block the adapter is off: `transformer` computes the base (reference) model."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()
