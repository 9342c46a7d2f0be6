"""`make bench-gpu` / `python -m benchmarks.bench --suite gpu`: the GPU figures, in one call of under
8 minutes on one H200, written to experiments/bench/gpu.md (+ gpu.csv).

  1. a FLUX.1-dev-sized FluxTransformer2DModel from its published config (random weights, nothing
     downloaded) at 512 px in bf16: forward time and MFU, eager and torch.compile;
  2. an E-GRPO rollout of one prompt at its paper defaults (G 12, 8 branch points, the plan's
     NFE) through flowrl's engine on that transformer, and its forward share;
  3. the peak memory of one LoRA (r128) training step with gradient checkpointing;
  4. one toy-benchmark iteration per method on the GPU (the shipped tiny model, the shapes reward).

`--dry-run` runs the same code on the CPU with a scaled-down transformer (a test runs it), so the
suite works the first time a device is lent. The GPU image lacks diffusers, hydra-core, omegaconf,
antlr4 and tabulate: `make gpu-wheels` downloads them (a few MiB) into wheels/, which the device
call carries and installs with `pip install --no-deps wheels/*.whl`.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "bench"

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
# the dry run: the same code on a transformer small enough for a CPU
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
PEAK_BF16_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0}  # dense bf16, NVIDIA's data sheets


@dataclass
class Size:
    image_px: int  # 512: 64 x 64 latents, packed 2 x 2 -> 1024 tokens of 64 channels
    text_tokens: int  # T5 tokens (FluxPipeline: 512)
    batch: int  # rows per forward in the timing
    repeats: int

    @property
    def image_tokens(self) -> int:
        return (self.image_px // 16) ** 2


class RandomFlux:
    """A FlowModel over a FLUX transformer with random weights and random prompt embeddings: the
    real model's compute without its checkpoint (no VAE, no text encoders: decode is a cheap
    projection so a reward can score something)."""

    def __init__(self, transformer, size: Size, device, dtype):
        from flowrl.models.diffusers_base import latent_image_ids

        self.transformer, self.size, self.device, self.dtype = transformer, size, torch.device(device), dtype
        side = size.image_px // 16
        self.img_ids = latent_image_ids(side, side).to(self.device)
        cfg = transformer.config
        self.text_dim, self.pooled_dim, self.channels = cfg.joint_attention_dim, cfg.pooled_projection_dim, cfg.in_channels

    @property
    def latent_shape(self):
        return (self.size.image_tokens, self.channels)

    def encode_prompts(self, prompts):
        from flowrl.models.base import PromptEmbeds

        g = torch.Generator().manual_seed(len(prompts))
        n = len(prompts)
        return PromptEmbeds(
            torch.randn(n, self.size.text_tokens, self.text_dim, generator=g).to(self.device, self.dtype),
            torch.randn(n, self.pooled_dim, generator=g).to(self.device, self.dtype),
        )

    def initial_noise(self, batch_size, generator=None):
        return torch.randn((batch_size, *self.latent_shape), generator=generator).to(self.device)

    def velocity(self, x, sigma, embeds):
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        text = embeds.prompt_embeds.to(self.device, self.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=self.device, dtype=self.img_ids.dtype)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            v = self.transformer(
                hidden_states=x.to(self.dtype),
                timestep=sigma,
                guidance=torch.full((b,), 3.5, device=self.device),
                pooled_projections=embeds.pooled_prompt_embeds.to(self.device, self.dtype),
                encoder_hidden_states=text,
                txt_ids=txt_ids,
                img_ids=self.img_ids,
                return_dict=False,
            )[0]
        return v.to(x.dtype)

    def decode(self, x0):
        side = self.size.image_px // 16
        img = x0.float()[..., :3].reshape(x0.shape[0], side, side, 3).permute(0, 3, 1, 2)
        return torch.sigmoid(img)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device) -> float:
    """Median seconds of fn() over `repeats`, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def forward_flops(cfg, image_tokens: int, text_tokens: int) -> float:
    """Model FLOPs of one forward of one row (multiply-add = 2). Width j = heads x head_dim; every
    token passes 12 j^2 matmul parameters per block (a joint block's stream: qkv 3j^2 + out j^2 +
    MLP 8j^2; a single block: fused qkv + MLP-in 7j^2, out 5j^2), and attention adds QK^T and AV,
    4 tokens^2 j per block, over image + text tokens. Embeddings and the AdaLN modulation are
    left out (under 1%)."""
    j = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    tokens = image_tokens + text_tokens
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    return float(blocks * (2 * 12 * j * j * tokens + 4 * tokens * tokens * j))


@dataclass
class Report:
    device: str
    dry_run: bool
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, **values) -> None:
        self.rows.append({"section": section, **values})
        print(section, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()}, flush=True)


def bench_transformer(report: Report, cfg: dict, size: Size, device, compile_too: bool):
    from diffusers import FluxTransformer2DModel

    start = time.perf_counter()
    with torch.device(device):
        transformer = FluxTransformer2DModel(**cfg).to(torch.bfloat16).eval()
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in transformer.parameters())
    model = RandomFlux(transformer, size, device, torch.bfloat16)
    x = torch.randn(size.batch, *model.latent_shape, device=device)
    embeds = model.encode_prompts(["p"] * size.batch)
    flops = forward_flops(cfg, size.image_tokens, size.text_tokens) * size.batch
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in report.device), None)

    def fwd():
        with torch.no_grad():
            model.velocity(x, torch.full((size.batch,), 0.5, device=device), embeds)

    eager = _timed(fwd, size.repeats, device)
    mfu = None if peak is None else flops / eager / (peak * 1e12)
    report.add(
        "forward",
        mode="eager",
        params=params,
        build_s=build_s,
        batch=size.batch,
        tokens=size.image_tokens + size.text_tokens,
        seconds=eager,
        tflops=flops / eager / 1e12,
        mfu=mfu,
    )
    if compile_too:
        compiled = torch.compile(transformer)
        model.transformer = compiled
        start = time.perf_counter()
        fwd()
        _sync(device)
        warm = time.perf_counter() - start
        t = _timed(fwd, size.repeats, device)
        report.add(
            "forward",
            mode="compile",
            params=params,
            warmup_s=warm,
            batch=size.batch,
            tokens=size.image_tokens + size.text_tokens,
            seconds=t,
            tflops=flops / t / 1e12,
            mfu=None if peak is None else flops / t / (peak * 1e12),
            vs_eager=eager / t,
        )
        model.transformer = transformer
    return model


def bench_egrpo_rollout(report: Report, model: RandomFlux, device, overrides: list[str], max_batch: int):
    from hydra.utils import instantiate

    from benchmarks.bench import TimedModel, compose_method
    from flowrl.engine.rollout import rollout

    setup = compose_method("egrpo", overrides)
    plan = instantiate(setup.cfg.method.step_scheduler).plan(0)
    timed = TimedModel(model)

    def brightness(images, prompts):
        return {"brightness": images.mean(dim=(1, 2, 3))}

    start = time.perf_counter()
    ro = rollout(timed, plan, ["a prompt"], brightness, torch.Generator().manual_seed(0), max_batch)
    _sync(device)
    s = time.perf_counter() - start
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


def bench_lora_step(report: Report, model: RandomFlux, device, batch: int):
    from flowrl.models.lora import add_lora

    transformer = model.transformer
    add_lora(transformer, rank=128, alpha=256)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()  # LoRA weights fp32, the base bf16 (flowrl.models.lora)
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    x = torch.randn(batch, *model.latent_shape, device=device)
    embeds = model.encode_prompts(["p"] * batch)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    v = model.velocity(x, torch.full((batch,), 0.5, device=device), embeds)
    v.float().square().mean().backward()
    opt.step()
    _sync(device)
    s = time.perf_counter() - start
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


def bench_toy_iterations(report: Report, device, quick: bool):
    from benchmarks.bench import METHODS, compose_method, optimizer_step_fn
    from flowrl.contract import RewardScores
    from flowrl.engine.rollout import rollout
    from flowrl.engine.update import LossConfig, policy_update
    from flowrl.models.tiny_flux import TinyFluxModel
    from flowrl.rewards.shapes import ShapesReward

    reward = ShapesReward()
    for method in METHODS:
        setup = compose_method(method, [f"experiment=toy_{method}"])
        cfg = setup.cfg
        sched = setup.step_scheduler
        if quick:
            setup = compose_method(method, [f"experiment=toy_{method}", *sched.small_overrides])
            cfg, sched = setup.cfg, setup.step_scheduler
        model = TinyFluxModel.from_pretrained().to(device)
        model.requires_grad_(False)
        model.transformer.requires_grad_(True)
        opt = torch.optim.AdamW(model.transformer.parameters(), lr=cfg.method.lr)
        prompts = ["a red circle on a blue background"] * (1 if quick else cfg.train.prompts_per_step)
        plan = sched.plan(0, torch.Generator().manual_seed(0))
        loss = LossConfig(cfg.method.clip_eps, cfg.method.adv_clip, 0.0)
        times = []
        for _ in range(1 if quick else 2):  # the first one warms up the kernels
            start = time.perf_counter()
            model.eval()
            ro = rollout(
                model,
                plan,
                prompts,
                lambda im, p: {"shapes": reward(im, p)},
                torch.Generator().manual_seed(0),
                cfg.train.max_batch,
            )
            adv = sched.advantages(RewardScores.single("shapes", ro.parts["shapes"]), plan, prompts)
            model.train()
            policy_update(model, plan, ro, adv, optimizer_step_fn(model, opt, 1.0), loss, cfg.train.max_batch)
            _sync(device)
            times.append(time.perf_counter() - start)
        report.add(
            "toy_iteration",
            method=method,
            prompts=len(prompts),
            nfe=plan.budget()["nfe_per_prompt"] * len(prompts),
            seconds=times[-1],
            kl_note="KL off (its reference copy is not the point here)",
        )


def render(report: Report, args) -> str:
    import pandas as pd

    lines = [
        "# flowrl GPU bench" + (" (dry run on the CPU: scaled-down sizes, not GPU figures)" if report.dry_run else ""),
        "",
        f"Device: {report.device}; torch {torch.__version__}. Command: `python -m benchmarks.bench --suite gpu"
        + (" --dry-run" if report.dry_run else "")
        + "`.",
        "",
    ]
    for section in dict.fromkeys(r["section"] for r in report.rows):
        rows = [{k: v for k, v in r.items() if k != "section"} for r in report.rows if r["section"] == section]
        lines += [f"## {section}", "", pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"), ""]
    lines += report.notes
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench --suite gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU at scaled-down sizes (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing (its warm-up is the slowest part)")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.dry_run:
        raise SystemExit("benchmarks.bench --suite gpu: no CUDA device (use --dry-run to check the code path on the CPU)")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    report = Report(name, args.dry_run)
    cfg = DRY if args.dry_run else FLUX_DEV
    size = (
        Size(image_px=64, text_tokens=8, batch=2, repeats=1)
        if args.dry_run
        else Size(image_px=512, text_tokens=512, batch=12, repeats=5)
    )
    started = time.perf_counter()
    model = bench_transformer(report, cfg, size, device, compile_too=not args.no_compile and not args.dry_run)
    small = ["method.num_steps=4", "method.group_size=2", "method.num_branch_steps=2"] if args.dry_run else []
    bench_egrpo_rollout(report, model, device, small, max_batch=size.batch * 2)
    bench_lora_step(report, model, device, batch=1 if args.dry_run else 4)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    bench_toy_iterations(report, device, quick=args.dry_run)
    report.notes.append(f"Whole suite: {time.perf_counter() - started:.0f} s.")
    text = render(report, args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_dry_run" if args.dry_run else "gpu"
    (args.out / f"{stem}.md").write_text(text)
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in report.rows for k in r))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(report.rows)
    print(text)
    return report


if __name__ == "__main__":
    main()
