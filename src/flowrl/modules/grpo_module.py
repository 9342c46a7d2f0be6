"""The one LightningModule: rollout -> reward -> advantages -> policy-gradient updates.

Reads top to bottom in training_step. Manual optimization: gradients of the trained denoising
steps are accumulated and the optimizer steps once per rollout (optim.optimizer_step =
"iteration", the peers' default) or once per trained step ("step", PPO-style, where the clip
binds from the second step on). The training forward re-evaluates each jump with the same row
chunks as the rollout, so before the first update the ratio is exactly 1 (tested bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import lightning as L
import torch

from flowrl.losses.grpo import grpo_loss
from flowrl.modules.ema import EMA
from flowrl.sampling.ode import generate
from flowrl.sampling.rollout import Rollout, chunks, jump_log_prob, rollout
from flowrl.sampling.sigmas import flow_sigmas
from flowrl.step_schedulers.base import RewardScores


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 1e-4
    adv_clip: float = 5.0
    kl_beta: float = 0.0
    # "iteration": accumulate the gradients of every trained step, one optimizer step per rollout
    # (DanceGRPO and the code built on it); the ratio stays 1 and the gradient is -A grad logp.
    # "step": one optimizer step per trained denoising step (PPO-style; the clip then binds).
    optimizer_step: str = "iteration"
    ema_decay: float = 0.0  # > 0: keep an EMA of the trained weights; evaluation and the final model use it

    def __post_init__(self):
        if self.optimizer_step not in ("iteration", "step"):
            raise ValueError(f"optimizer_step must be 'iteration' or 'step', got {self.optimizer_step!r}")


@dataclass
class ValConfig:
    samples_per_prompt: int = 2  # fixed noise per (prompt, sample) -> same images each eval
    seed: int = 1234
    num_steps: int = 16  # ODE steps for evaluation
    grid_prompts: int = 8  # prompts shown in the logged grid
    train_grid_every: int = 10  # log a grid of rollout images every n iterations


class GRPOModule(L.LightningModule):
    def __init__(
        self,
        model,
        reward,
        eval_rewards: dict,
        step_scheduler,
        shift: float = 3.0,
        max_batch: int = 64,
        optim: OptimConfig | None = None,
        val: ValConfig | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.model = model
        self.reward = reward
        self.eval_rewards = torch.nn.ModuleDict(dict(eval_rewards))
        self.step_scheduler = step_scheduler
        self.optim = optim or OptimConfig()
        self.val_cfg = val or ValConfig()
        self.max_batch = max_batch
        self.shift = shift
        self.sigmas = flow_sigmas(step_scheduler.num_steps, shift)
        self.automatic_optimization = False
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        # Reference policy for the KL term: the adapter disabled (LoRA), or a frozen copy of the
        # initial weights (full fine-tune; cheap for the tiny model, a second copy for real ones).
        needs_copy = self.optim.kl_beta > 0 and not getattr(model, "has_adapter", False)
        self.ref_model = copy.deepcopy(model).requires_grad_(False).eval() if needs_copy else None
        self.model.requires_grad_(False)
        for p in self._trainable(model):  # LoRA weights when an adapter is on, else the transformer
            p.requires_grad_(True)
        self.reward.requires_grad_(False)
        self.eval_rewards.requires_grad_(False)
        self.ema = EMA(self._trainable(model), self.optim.ema_decay) if self.optim.ema_decay > 0 else None

    @staticmethod
    def _trainable(model) -> list[torch.nn.Parameter]:
        if hasattr(model, "trainable_parameters"):
            return list(model.trainable_parameters())
        return list(model.transformer.parameters())

    def on_fit_start(self):
        """Under DDP every rank gets its own rollout noise (rank 0 keeps the single-device stream)."""
        if self.global_rank:
            self.generator.manual_seed(self.seed + 1_000_003 * self.global_rank)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: the model has no trainable parameters")
        return torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)

    # ---- training -------------------------------------------------------------------------
    def score(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The trained reward's parts for a chunk of images (the engine calls this per chunk)."""
        return self.reward.components(images, prompts)

    def rollout(self, prompts: list[str]) -> tuple[Rollout, RewardScores]:
        """Sample under the current policy (no grad) and score every image the plan asks for."""
        self.model.eval()
        ro = rollout(self.model, self.step_scheduler, list(prompts), self.sigmas, self.score, self.generator, self.max_batch)
        combine = getattr(self.reward, "combine", None)
        total = combine(ro.parts) if combine is not None else ro.parts[self.reward.name]
        weights = dict(getattr(self.reward, "weights", {self.reward.name: 1.0}))
        return ro, RewardScores(ro.parts, total, weights)

    def training_step(self, prompts: list[str], batch_idx: int):
        start = time.perf_counter()
        # 1. rollout: the step scheduler's plan under the current policy, every image scored
        ro, scores = self.rollout(prompts)
        rollout_s = time.perf_counter() - start
        # 2. group-relative advantages for every (sample, stochastic jump): [P, G, J]
        adv = self.step_scheduler.advantages(scores, list(prompts))
        # 3. policy-gradient updates on the trained jumps, one forward per start state
        self.model.train()
        opt = self.optimizers()
        trained = self.step_scheduler.trained_jumps(self.generator)
        total_terms = sum(ro.jump_sets[j].log_prob.numel() for j in trained)
        per_step = self.optim.optimizer_step == "step"
        logs: list[dict] = []
        opt.zero_grad(set_to_none=True)
        for j in trained:
            js = ro.jump_sets[j]
            adv_j = adv[:, :, j].reshape(js.log_prob.shape).to(js.log_prob.device)  # [M, K]
            terms = js.log_prob.numel()
            for rows in chunks(js.x.shape[0], self.max_batch):  # the rollout's chunks: ratio 1 bit for bit
                out = jump_log_prob(self.model, self.step_scheduler, ro, js, rows)
                ref_mean = self._ref_mean(ro, js, rows) if self.optim.kl_beta > 0 else None
                res = grpo_loss(
                    out.log_prob,
                    js.log_prob[rows].flatten(),
                    adv_j[rows].flatten(),
                    self.optim.clip_eps,
                    adv_clip=self.optim.adv_clip,
                    kl_beta=self.optim.kl_beta,
                    mean=out.mean if ref_mean is not None else None,
                    ref_mean=ref_mean,
                    std=out.std if ref_mean is not None else None,
                )
                # mean over every trained (sample, jump) term of the iteration, or of the step
                weight = out.log_prob.numel() / (terms if per_step else total_terms)
                self.manual_backward(res.loss * weight)
                logs.append(res.metrics())
            if per_step:
                self._optimizer_step(opt)
        if not per_step:
            self._optimizer_step(opt)
        # 4. metrics (namespaced)
        metrics = {k: sum(d[k] for d in logs) / len(logs) for k in logs[0]}
        for name, part in scores.parts.items():
            metrics[f"train/reward/{name}"] = part.mean().item()
        metrics.update(
            {
                "train/reward_std": scores.total.std().item(),
                "train/adv_std": adv.std().item(),
                "train/adv_abs_mean": adv.abs().mean().item(),
                "train/first_step_ratio_mean": logs[0]["train/ratio_mean"],
                "perf/nfe": float(ro.nfe),
                "perf/forwards": float(ro.forwards),
                "perf/rollout_s": rollout_s,
                "perf/iteration_s": time.perf_counter() - start,
            }
        )
        self.log_dict(metrics, on_step=True, prog_bar=False, batch_size=len(prompts))
        # bar only; MLflow gets train/reward/<name>
        self.log("reward", scores.total.mean().item(), prog_bar=True, logger=False, batch_size=len(prompts))
        if batch_idx % max(1, self.val_cfg.train_grid_every) == 0 and hasattr(self.logger, "run_id"):
            from flowrl.tracking import log_image_grid

            log_image_grid(self.logger, ro.images[: self.val_cfg.grid_prompts * 4], "train", step=self.global_step, nrow=8)
        return None

    def calibrate(self, prompts: list[str], logger=None) -> dict | None:
        """The step scheduler's optional pre-training phase (e.g. DenseGRPO's exploration
        calibration), run with this module's rollout; logged as an artifact when it happens."""
        record = self.step_scheduler.calibrate(self.rollout, list(prompts))
        if record is not None and hasattr(logger, "run_id"):
            logger.experiment.log_dict(logger.run_id, record, "calibration.json")
        return record

    def _optimizer_step(self, opt) -> None:
        if self.optim.grad_clip > 0:
            self.clip_gradients(opt, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()

    @torch.no_grad()
    def _ref_mean(self, ro: Rollout, js, rows: slice) -> torch.Tensor:
        """The reference policy's transition mean: adapter disabled, or the frozen copy."""
        if self.ref_model is not None:
            return jump_log_prob(self.ref_model, self.step_scheduler, ro, js, rows).mean
        with self.model.reference_policy():
            return jump_log_prob(self.model, self.step_scheduler, ro, js, rows).mean

    def evaluated_weights(self):
        """The weights evaluation and the saved model use: the EMA when on, else the live ones."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    # ---- validation: held-out prompts, fixed noise, every eval reward ---------------------
    def validation_step(self, prompts: list[str], batch_idx: int):
        cfg = self.val_cfg
        self.model.eval()
        rows = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
        with self.evaluated_weights():
            images = generate(
                self.model, rows, num_steps=cfg.num_steps, shift=self.shift, seed=cfg.seed, batch_size=self.max_batch
            )
        for name, reward in self.eval_rewards.items():
            value = reward(images, rows).mean().item()
            # Lightning aggregates this for the bar and trainer.validate()'s result; MLflow gets the
            # epoch mean in on_validation_epoch_end, at the step the sample grid uses.
            self.log(f"val/reward/{name}", value, batch_size=len(rows), prog_bar=name == "shapes", logger=False)
            total, count = self._val_sums.get(name, (0.0, 0))
            self._val_sums[name] = (total + value * len(rows), count + len(rows))
        self.last_val_images = images[: cfg.grid_prompts * cfg.samples_per_prompt]

    def on_validation_epoch_start(self):
        self._val_sums: dict[str, tuple[float, int]] = {}  # name -> (sum of batch means x rows, rows)

    def on_validation_epoch_end(self):
        """Held-out rewards logged at step = optimizer updates so far (0 before training, N after
        N iterations; Lightning's own step would say N - 1 for an evaluation inside the loop).
        The same prompts and noise every evaluation: the grids show the policy change."""
        if self.logger is not None and self._val_sums:
            means = {f"val/reward/{name}": total / count for name, (total, count) in self._val_sums.items()}
            self.logger.log_metrics(means, step=self.global_step)
        images = getattr(self, "last_val_images", None)
        if images is not None and hasattr(self.logger, "run_id"):
            from flowrl.tracking import log_image_grid

            log_image_grid(self.logger, images, "val", step=self.global_step, nrow=self.val_cfg.samples_per_prompt * 4)
