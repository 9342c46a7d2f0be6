"""`make bench-gpu` / `python -m benchmarks.bench --suite gpu`: the GPU figures, in one call of under
8 minutes on one H200, written to experiments/bench/gpu.md (+ gpu.csv).

  1. flowrl's shipped FluxModel around a FLUX.1-dev-sized FluxTransformer2DModel and VAE from
     their published configs (random weights, nothing downloaded) at 512 px in bf16: forward time
     and MFU (FLOPs: FluxModel.forward_flops), eager and torch.compile;
  2. an E-GRPO rollout of one prompt at its paper defaults (G 12, 8 branch points, the plan's
     NFE) through flowrl's engine on that model (VAE decode included), and its forward share;
  3. the peak memory of one LoRA (r128) training step with gradient checkpointing;
  4. one toy-benchmark iteration per method on the GPU (the shipped tiny model, the shapes reward).

The text encoders are the one stand-in: T5-XXL and CLIP-L would add 4.8 B parameters to load
for nothing the suite measures (flowrl caches prompt embeddings), so a PromptEncoder whose
"encoders" draw fixed random embeddings of the real shapes feeds FluxModel instead.

`--dry-run` runs the same code on the CPU with a scaled-down transformer and VAE (a test runs it),
so the suite works the first time a device is lent. The GPU image lacks diffusers, hydra-core,
omegaconf, antlr4 and tabulate: `make gpu-wheels` downloads them (a few MiB) into wheels/, which
the device call carries and installs with `pip install --no-deps wheels/*.whl`.
"""

from __future__ import annotations

import argparse
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.methods import METHODS, PROMPT, bench_prompts, compose_method, make_loss, make_optimizer, optimizer_step_fn
from benchmarks.report import RESULTS_DIR, GpuReport, write_results
from benchmarks.timing import TimedModel, median_seconds, sync

# black-forest-labs/FLUX.1-dev transformer/config.json (the published architecture, 11.9 B parameters)
FLUX_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# black-forest-labs/FLUX.1-dev vae/config.json (AutoencoderKL, 16 latent channels, 8x down)
FLUX_DEV_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# the dry run: the same code on a transformer and VAE small enough for a CPU (same latent layout)
DRY = {
    **FLUX_DEV,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 16,
    "axes_dims_rope": (4, 6, 6),
}
DRY_VAE = {**FLUX_DEV_VAE, "block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64}
PEAK_BF16_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0}  # dense bf16, NVIDIA's data sheets


@dataclass
class Size:
    image_px: int  # 512: 64 x 64 latents, packed 2 x 2 -> 1024 tokens of 64 channels
    text_tokens: int  # T5 tokens (FluxPipeline's max_sequence_length: 512)
    batch: int  # rows per forward in the timing
    min_run_time: float  # seconds per torch.utils.benchmark measurement


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Build the modules directly in `dtype`: FLUX.1-dev in fp32 first would need 48 GB at once."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def random_prompt_encoder(text_tokens: int, text_dim: int, pooled_dim: int, device):
    """flowrl's PromptEncoder over stand-in encoders: each prompt's embeddings drawn from a
    generator seeded by the prompt (fixed per prompt, as a real encoder's), T5's and CLIP's shapes."""
    from flowrl.models.text_cache import PromptEncoder

    def encode(_encoders, prompts: list[str], _device) -> dict[str, torch.Tensor]:
        # on the CPU: PromptEncoder keeps rows there and the model moves them to its device
        rows = [torch.Generator().manual_seed(zlib.crc32(p.encode())) for p in prompts]
        return {
            "prompt_embeds": torch.stack([torch.randn(text_tokens, text_dim, generator=g) for g in rows]),
            "pooled_prompt_embeds": torch.stack([torch.randn(pooled_dim, generator=g) for g in rows]),
        }

    return PromptEncoder(lambda: torch.nn.Module(), encode, device=device, offload="keep")  # nothing to load


def random_flux(transformer_cfg: dict, vae_cfg: dict, size: Size, device):
    """The shipped flowrl.models.flux.FluxModel (the path `model=flux_dev` trains) around a random
    FluxTransformer2DModel and AutoencoderKL of the given configs, in bf16."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from flowrl.models.flux import FluxModel

    with torch.device(device), default_dtype(torch.bfloat16):
        transformer = FluxTransformer2DModel(**transformer_cfg).eval()
        vae = AutoencoderKL(**vae_cfg)
    text = random_prompt_encoder(
        size.text_tokens, transformer_cfg["joint_attention_dim"], transformer_cfg["pooled_projection_dim"], device
    )
    model = FluxModel(
        Path("random-weights"), transformer, vae, text, height=size.image_px, width=size.image_px, dtype=torch.bfloat16
    )
    return model.to(device).eval()


def mfu(flops: float, seconds: float, device_name: str) -> float | None:
    """Model FLOPs utilisation against the card's dense bf16 peak (None: a card not in the table)."""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)
    return None if peak is None else flops / seconds / (peak * 1e12)


def bench_transformer(report: GpuReport, transformer_cfg: dict, vae_cfg: dict, size: Size, device, compile_too: bool):
    clock = time.perf_counter()
    model = random_flux(transformer_cfg, vae_cfg, size, device)
    build_s = time.perf_counter() - clock
    params = sum(p.numel() for p in model.transformer.parameters())
    x = torch.randn(size.batch, *model.latent_shape, device=device)
    embeds = model.encode_prompts([PROMPT] * size.batch)
    sigma = torch.full((size.batch,), 0.5, device=device)
    flops = model.forward_flops(size.batch, size.text_tokens)
    tokens = model.latent_shape[0] + size.text_tokens

    def fwd():
        with torch.no_grad():
            model.velocity(x, sigma, embeds)

    eager = median_seconds(fwd, size.min_run_time)
    report.add(
        "forward",
        mode="eager",
        params=params,
        build_s=build_s,
        batch=size.batch,
        tokens=tokens,
        seconds=eager,
        tflops=flops / eager / 1e12,
        mfu=mfu(flops, eager, report.device),
    )
    if compile_too:
        # swapped in, not compiled in place as model.compile=true does: the rollout after this
        # runs eager, because its varying batch sizes would each trigger a recompile
        transformer = model.transformer
        model.transformer = torch.compile(transformer)
        clock = time.perf_counter()
        fwd()
        sync(device)
        warm = time.perf_counter() - clock
        t = median_seconds(fwd, size.min_run_time)
        report.add(
            "forward",
            mode="compile",
            params=params,
            warmup_s=warm,
            batch=size.batch,
            tokens=tokens,
            seconds=t,
            tflops=flops / t / 1e12,
            mfu=mfu(flops, t, report.device),
            vs_eager=eager / t,
        )
        model.transformer = transformer
    return model


def bench_egrpo_rollout(report: GpuReport, model, device, small: bool, max_batch: int) -> None:
    from flowrl.engine.rollout import rollout

    plan = compose_method("egrpo", [], small=small).step_scheduler.plan(0)
    timed = TimedModel(model)

    def brightness(images, prompts):
        return {"brightness": images.mean(dim=(1, 2, 3))}

    clock = time.perf_counter()  # one rollout, minutes long at paper size: timed where it runs
    ro = rollout(timed, plan, [PROMPT], brightness, torch.Generator().manual_seed(0), max_batch)
    sync(device)
    s = time.perf_counter() - clock
    report.add(
        "egrpo_rollout",
        G=plan.group_size,
        branch_points=len(plan.jumps),
        nfe_papers=plan.budget()["nfe_per_prompt"],
        nfe_spent=ro.nfe,
        forwards=ro.forwards,
        max_batch=max_batch,
        seconds=s,
        forward_share=timed.forward_s / s,
    )


def bench_lora_step(report: GpuReport, model, device, batch: int) -> None:
    from flowrl.models.lora import add_lora

    add_lora(model.transformer, rank=128, alpha=256)  # LoRA weights fp32, the base bf16
    model.transformer.enable_gradient_checkpointing()
    model.train()
    trainable = model.trainable_parameters()
    opt = make_optimizer(compose_method("egrpo", []).cfg, trainable)
    x = torch.randn(batch, *model.latent_shape, device=device)
    embeds = model.encode_prompts([PROMPT] * batch)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = time.perf_counter()  # one step: the peak memory is the figure, the time a by-product
    v = model.velocity(x, torch.full((batch,), 0.5, device=device), embeds)
    v.float().square().mean().backward()
    opt.step()
    sync(device)
    s = time.perf_counter() - clock
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None
    report.add(
        "lora_step",
        rank=128,
        batch=batch,
        gradient_checkpointing=True,
        trainable=sum(p.numel() for p in trainable),
        seconds=s,
        peak_gib=peak,
    )


def bench_toy_iterations(report: GpuReport, device, quick: bool) -> None:
    from flowrl.contract import RewardScores
    from flowrl.engine.rollout import rollout
    from flowrl.engine.update import policy_update
    from flowrl.models.tiny_flux import TinyFluxModel
    from flowrl.rewards.shapes import ShapesReward

    reward = ShapesReward()
    for method in METHODS:
        setup = compose_method(method, [f"experiment=toy_{method}"], small=quick)
        cfg, step_scheduler = setup.cfg, setup.step_scheduler
        model = TinyFluxModel.from_pretrained().to(device)
        model.requires_grad_(False)
        model.transformer.requires_grad_(True)
        step_fn = optimizer_step_fn(model, make_optimizer(cfg, model.trainable_parameters()), cfg.train.grad_clip)
        loss = make_loss(cfg, kl_beta=0.0)  # KL off: its reference copy is not the point here
        plan = step_scheduler.plan(0, torch.Generator().manual_seed(0))
        prompts = bench_prompts(plan, 1 if quick else cfg.train.prompts_per_step)
        times = []
        for _ in range(1 if quick else 2):  # the first one warms up the kernels; the weights change: timed where it runs
            clock = time.perf_counter()
            model.eval()
            score = lambda im, p: {"shapes": reward(im, p)}  # noqa: E731
            ro = rollout(model, plan, prompts, score, torch.Generator().manual_seed(0), cfg.train.max_batch)
            adv = step_scheduler.advantages(RewardScores.single("shapes", ro.parts["shapes"]), plan, prompts)
            model.train()
            # a forward-process objective's views run on the live weights: the same forwards, the
            # copies are not the point here (as the KL's reference above)
            views = lambda name, x, sigma, embeds, m=model: m.velocity(x, sigma, embeds)  # noqa: E731
            policy_update(model, plan, ro, adv, step_fn, loss, cfg.train.max_batch, views=views)
            sync(device)
            times.append(time.perf_counter() - clock)
        report.add(
            "toy_iteration",
            method=method,
            prompts=len(prompts),
            nfe=plan.budget()["nfe_per_prompt"] * len(prompts),
            seconds=times[-1],
            kl_note="KL off (its reference copy is not the point here)",
        )


def main(argv: list[str] | None = None) -> GpuReport:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench --suite gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU at scaled-down sizes (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing (its warm-up is the slowest part)")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.dry_run:
        raise SystemExit("benchmarks.bench --suite gpu: no CUDA device (use --dry-run to check the code path on the CPU)")
    report = GpuReport(torch.cuda.get_device_name(0) if device == "cuda" else "cpu", args.dry_run)
    size = Size(64, 8, batch=2, min_run_time=0.05) if args.dry_run else Size(512, 512, batch=12, min_run_time=3.0)
    started = time.perf_counter()
    transformer_cfg, vae_cfg = (DRY, DRY_VAE) if args.dry_run else (FLUX_DEV, FLUX_DEV_VAE)
    model = bench_transformer(
        report, transformer_cfg, vae_cfg, size, device, compile_too=not args.no_compile and not args.dry_run
    )
    bench_egrpo_rollout(report, model, device, small=args.dry_run, max_batch=size.batch * 2)
    bench_lora_step(report, model, device, batch=1 if args.dry_run else 4)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    bench_toy_iterations(report, device, quick=args.dry_run)
    report.notes.append(f"Whole suite: {time.perf_counter() - started:.0f} s.")
    text = report.render()
    write_results(args.out, "gpu_dry_run" if args.dry_run else "gpu", text, report.rows)
    print(text)
    return report


if __name__ == "__main__":
    main()
