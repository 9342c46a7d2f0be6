"""The one LightningModule: plan -> rollout -> reward -> advantages -> policy update.

Reads top to bottom in training_step. The step scheduler's plan of the iteration is built once
and is all that the rollout engine and the policy update see; the update (flowrl.engine.update, the one
trained-jump loop) places the optimizer steps where the plan says (per trained jump, every few
samples, or per share of the rollout: what each method's official script does). Manual optimization. The training forward
re-evaluates each jump with the rollout's row chunks (flowrl.engine.rollout says why the ratio is
then exactly 1 before the first optimizer step).

Metrics are logged at step = iterations completed (train: 1..N; held-out: 0 before training,
then every `trainer.val_check_interval` iterations or, with a budget, at 25 / 50 / 75% of it:
flowrl.training.run_control), whatever the number of optimizer steps.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from dataclasses import dataclass

import lightning as L
import torch

from flowrl.contract import RewardScores
from flowrl.engine.rollout import Rollout, jump_log_prob, rollout
from flowrl.engine.update import LossConfig, policy_update
from flowrl.evaluation.stats import bootstrap_ci, category_means
from flowrl.sampling.ode import generate
from flowrl.training.ema import EMA, PolicyCopies
from flowrl.training.metrics import iteration_metrics, log_metrics
from flowrl.utils.seeds import mix_seed


@dataclass
class OptimConfig:
    lr: float = 1e-5  # method.lr x train.lr_scale, given to the optimizer factory
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # > 0: keep an EMA of the trained weights; evaluation and the final model use it
    ema_every: int = 1  # average in every n-th optimizer step
    ema_warmup: bool = False  # decay min((1 + s) / (10 + s), ema_decay) at optimizer step s (flow_grpo)


@dataclass
class ValConfig:
    samples_per_prompt: int = 2  # fixed noise per (prompt, sample) -> same images each eval
    seed: int = 1234
    num_steps: int = 16  # ODE steps for evaluation
    grid_prompts: int = 8  # prompts shown in the logged grid
    train_grid_every: int = 10  # log a grid of rollout images every n iterations
    full_precision: bool = True  # held-out samples in the model's full precision, whatever model.precision
    # the evaluations before and after training (the run's Δ) may be larger than the ones between:
    # null = samples_per_prompt. Their noise is fixed by val.seed, as the others'.
    final_samples_per_prompt: int | None = None
    ci_resamples: int = 1000  # bootstrap resamples (over prompts) of each score's 95% interval
    max_prompts: int | None = None  # held-out prompts evaluated (the loader's subset, flowrl.training.build)
    # a folder: the evaluation before training cached there (flowrl.training.eval_cache)
    before_cache: str | None = None
    # with a budget: the fractions of it with an evaluation between 0 and 100% (flowrl.training.run_control)
    budget_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)

    def samples(self, final: bool) -> int:
        return (self.final_samples_per_prompt or self.samples_per_prompt) if final else self.samples_per_prompt


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
        optimizer=None,
        lr_scheduler=None,
        loss: LossConfig | None = None,
        val: ValConfig | None = None,
        seed: int = 0,
        max_consecutive_skips: int = 10,
    ):
        super().__init__()
        self.model = model
        self.reward = reward
        self.eval_rewards = torch.nn.ModuleDict(dict(eval_rewards))
        self.step_scheduler = step_scheduler
        self.optim = optim or OptimConfig()
        # factories from the config (`optimizer:` / `lr_scheduler:` in conf/train.yaml, Hydra _partial_)
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, weight_decay=1e-4)
        self.lr_scheduler_factory = lr_scheduler
        self.loss_cfg = loss or LossConfig()
        self.val_cfg = val or ValConfig()
        self.max_batch = max_batch
        self.shift = shift  # the held-out evaluation's ODE schedule (the plans carry their own)
        self.automatic_optimization = False
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        # counters the next iteration depends on (what a checkpoint must hold)
        self.iteration = 0  # iterations completed
        self.optimizer_steps_done = 0
        self.nfe_total = 0  # NFE as flowrl.plan counts them (the papers' count)
        self.reward_queries_total = 0
        self.wall_total = 0.0  # seconds spent in training iterations (held-out evaluations excluded)
        self.evaluated_at = -1  # iterations completed at the last held-out evaluation
        self.last_eval: dict[str, float] = {}
        self.last_eval_final = False  # the last evaluation had the endpoint size (val.final_samples_per_prompt)
        self.last_logged: dict[str, float] = {}  # the last evaluation's logged metrics (val.before_cache stores them)
        self.last_categories: dict[str, float] = {}  # its val/category/* metrics (GenEval's per category)
        self.skipped_updates = 0  # optimizer steps skipped for a non-finite value, in all
        self.consecutive_skips = 0
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.resume_optimizer_state: dict | None = None  # a checkpoint's, loaded at fit start
        self._manual_allreduce = False  # DDP: gradients averaged in _optimizer_step (see _no_backward_sync)
        # Reference policy for the KL term: the adapter disabled (LoRA), or a frozen copy of the
        # initial weights (full fine-tune; cheap for the tiny model, a second copy for real ones).
        # The plan's objective may read it too (DiffusionNFT's and AWM's KL): the first plan says.
        first_plan = step_scheduler.plan(0, torch.Generator().manual_seed(0))
        needs_ref = self.loss_cfg.kl_beta > 0 or "reference" in first_plan.objective.views
        needs_copy = needs_ref and not getattr(model, "has_adapter", False)
        self.ref_model = copy.deepcopy(model).requires_grad_(False).eval() if needs_copy else None
        self.model.requires_grad_(False)
        for p in self._trainable(model):  # LoRA weights when an adapter is on, else the transformer
            p.requires_grad_(True)
        self.reward.requires_grad_(False)
        self.eval_rewards.requires_grad_(False)
        self.copies = PolicyCopies(self._trainable(model))  # the plans' policy copies, made when first named
        o = self.optim
        self.ema = EMA(self._trainable(model), o.ema_decay, o.ema_every, o.ema_warmup) if o.ema_decay > 0 else None

    @staticmethod
    def _trainable(model) -> list[torch.nn.Parameter]:
        if hasattr(model, "trainable_parameters"):
            return list(model.trainable_parameters())
        return list(model.transformer.parameters())

    def iteration_seed(self, iteration: int, rank: int) -> int:
        """The rollout generator's seed for (iteration, rank): each iteration draws its plan and its
        noise from a generator seeded anew, so a resumed run (on any rank) draws exactly what the
        uninterrupted one would, and every DDP rank has noise of its own."""
        return mix_seed("rollout", self.seed, iteration, rank)

    def on_fit_start(self):
        """A resumed run's optimizer state goes into the optimizer Lightning just built."""
        if self.resume_optimizer_state is not None:
            self.optimizers().optimizer.load_state_dict(self.resume_optimizer_state)
            self.resume_optimizer_state = None

    PROGRESS = (
        "iteration",
        "optimizer_steps_done",
        "nfe_total",
        "reward_queries_total",
        "wall_total",
        "evaluated_at",
        "skipped_updates",
        "consecutive_skips",
    )

    def progress_state(self) -> dict:
        """The counters the next iteration depends on (a checkpoint's state.json)."""
        return {k: getattr(self, k) for k in self.PROGRESS} | {
            "last_eval": dict(self.last_eval),
            "last_eval_final": self.last_eval_final,
            "last_categories": self.last_categories,
        }

    def load_progress_state(self, state: dict) -> None:
        for k in self.PROGRESS:
            setattr(self, k, type(getattr(self, k))(state[k]))
        self.last_eval = dict(state.get("last_eval", {}))
        self.last_eval_final = bool(state.get("last_eval_final", False))
        self.last_categories = dict(state.get("last_categories", {}))

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: the model has no trainable parameters")
        opt = self.optimizer_factory(params, lr=self.optim.lr)
        if self.lr_scheduler_factory is None:
            return opt
        # the schedule is a function of the optimizer steps done: a resumed run's scheduler starts
        # where the checkpoint's left off (last_epoch = steps done - 1; torch then needs initial_lr)
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
        sched = self.lr_scheduler_factory(opt, last_epoch=self.optimizer_steps_done - 1)
        return {"optimizer": opt, "lr_scheduler": sched}

    def current_lr(self) -> float:
        """The lr the next optimizer step will use (the lr_scheduler's current value)."""
        return float(self.optimizers().optimizer.param_groups[0]["lr"])

    # ---- training -------------------------------------------------------------------------
    def score(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The trained reward's parts for a chunk of images (the engine calls this per chunk). A
        reward model that raises ends the run with its error in one line (RewardFailed)."""
        from flowrl.config.errors import RewardFailed

        try:
            return self.reward.components(images, prompts)
        except Exception as err:  # one line for the user; the traceback in the run (tag, error.txt)
            import traceback

            self.reward_traceback = traceback.format_exc()
            raise RewardFailed(
                f"reward {self.reward.name!r} failed in iteration {self.iteration + 1}: {type(err).__name__}: {err}"
            ) from err

    def rollout(self, prompts: list[str], plan) -> tuple[Rollout, RewardScores]:
        """Sample `plan` under the current policy (no grad) and score every image it asks for."""
        self.model.eval()
        with self.copies.sampling(plan):  # the copy the plan samples with (DiffusionNFT: the old policy)
            ro = rollout(self.model, plan, list(prompts), self.score, self.generator, self.max_batch)
        combine = getattr(self.reward, "combine", None)
        total = combine(ro.parts) if combine is not None else ro.parts[self.reward.name]
        weights = dict(getattr(self.reward, "weights", {self.reward.name: 1.0}))
        return ro, RewardScores(ro.parts, total, weights)

    def training_step(self, prompts: list[str], batch_idx: int):
        start = time.perf_counter()
        prompts = list(prompts)
        self.generator.manual_seed(self.iteration_seed(self.iteration, self.global_rank))
        # 1. this iteration's plan, built once and frozen: all that the engine and the update see
        plan = self.step_scheduler.plan(self.iteration, self.generator)
        # 2. rollout: the plan under the current policy, every image it asks for scored
        ro, scores = self.rollout(prompts, plan)
        rollout_s = time.perf_counter() - start
        # 3. group-relative advantages, one [M_j, K_j] tensor per jump (the jump sets' layout)
        adv = self.step_scheduler.advantages(scores, plan, prompts)
        # 4. the policy update: the plan's trained jumps, its optimizer steps
        stats = self.update_policy(plan, ro, scores, adv, len(prompts))
        self.copies.after_iteration(plan, self.optimizer_steps_done)  # the plan's soft-updated copies
        # 5. what it cost, then the metrics (namespaced) at step = iterations completed
        budget = plan.budget()
        world = self.trainer.world_size if self._trainer is not None else 1  # every rank spends its own
        self.iteration += 1
        self.nfe_total += budget["nfe_per_prompt"] * len(prompts) * world
        self.reward_queries_total += budget["reward_queries_per_prompt"] * len(prompts) * world
        self.wall_total += time.perf_counter() - start
        metrics = iteration_metrics(self, scores, adv, stats, ro, rollout_s, time.perf_counter() - start)
        log_metrics(self, metrics, stats, ro, len(prompts), scores.total.mean().item())
        self._check_divergence()
        return None

    def update_policy(self, plan, ro: Rollout, scores: RewardScores, adv: list[torch.Tensor], num_prompts: int):
        """policy_update with this module's optimizer step; a non-finite reward, advantage,
        log-prob, loss or gradient skips the update it would enter. Returns the UpdateStats."""
        self.model.train()
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        skips_before = self.skipped_updates
        bad_input = "reward" if not torch.isfinite(scores.total).all() else None
        if bad_input is None and not all(torch.isfinite(a).all() for a in adv):
            bad_input = "advantage"
        if bad_input is not None:
            from flowrl.engine.update import UpdateStats

            n_steps = len(plan.optimizer_steps(num_prompts))
            stats = UpdateStats()
            for _ in range(n_steps):  # every rank calls the same optimizer steps (DDP)
                if self._optimizer_step(opt, bad_input) is not None:
                    stats.skipped.append(bad_input)
        else:
            with self._no_backward_sync():  # DDP: gradients averaged once per optimizer step
                stats = policy_update(
                    self.model,
                    plan,
                    ro,
                    adv,
                    step_fn=lambda cause: self._optimizer_step(opt, cause),
                    loss=self.loss_cfg,
                    max_batch=self.max_batch,
                    backward=self.manual_backward,
                    reference_mean=self._ref_mean if self.loss_cfg.kl_beta > 0 else None,
                    views=self._view,
                )
        # an iteration with a skipped update counts toward train.max_consecutive_skips
        self.consecutive_skips = self.consecutive_skips + 1 if self.skipped_updates > skips_before else 0
        return stats

    def calibrate(self, prompts: list[str], logger=None) -> dict | None:
        """The step scheduler's optional pre-training phase (e.g. an exploration
        calibration), run with this module's rollout; logged as an artifact when it happens."""
        record = self.step_scheduler.calibrate(self._counted_rollout, list(prompts))
        if record is not None and hasattr(logger, "run_id"):
            logger.experiment.log_dict(logger.run_id, record, "calibration.json")
        return record

    def _counted_rollout(self, prompts: list[str], plan):
        """A rollout whose cost counts toward the budget spent (a method's calibration)."""
        out = self.rollout(prompts, plan)
        b = plan.budget()
        self.nfe_total += b["nfe_per_prompt"] * len(prompts)
        self.reward_queries_total += b["reward_queries_per_prompt"] * len(prompts)
        return out

    def _no_backward_sync(self):
        """Under DDP: no gradient all-reduce in backward (ranks may make different numbers of
        backward calls: their own per-sample steps, filtered rows), one in _optimizer_step."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if strategy is not None and self.trainer.world_size > 1 and hasattr(strategy, "block_backward_sync"):
            self._manual_allreduce = True
            return strategy.block_backward_sync()
        self._manual_allreduce = False
        return contextlib.nullcontext()

    def _optimizer_step(self, opt, cause: str | None = None) -> str | None:
        """policy_update's step_fn: clip and apply the accumulated gradients, unless a cause is
        given or the gradients are not finite: then drop them. Returns why it skipped, or None.
        Under DDP the decision is every rank's (one rank's non-finite value skips the step on all)
        and the gradients are averaged here (a rank without a term adds zeros: "empty")."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self._manual_allreduce:
            import torch.distributed as dist

            vetoed = self.trainer.strategy.reduce_boolean_decision(cause not in (None, "empty"), all=False)
            if vetoed:
                cause = cause if cause not in (None, "empty") else "another rank"
            else:
                world = self.trainer.world_size
                for p in params:
                    g = p.grad if p.grad is not None else torch.zeros_like(p)
                    dist.all_reduce(g)
                    p.grad = g / world
                cause = None
        if cause is None:
            grads = [p.grad for p in params if p.grad is not None]
            if grads and not torch.isfinite(torch.stack([g.detach().float().norm() for g in grads]).norm()):
                cause = "gradient"
        if cause == "empty":  # nothing to apply, nothing wrong
            opt.zero_grad(set_to_none=True)
            return cause
        if cause is not None:
            opt.zero_grad(set_to_none=True)
            self._skip(cause)
            return cause
        if self.optim.grad_clip > 0:
            from flowrl.training.distributed import is_fsdp

            if is_fsdp(self._trainer):  # Lightning refuses norm clipping under FSDP: the root module's own
                self.trainer.strategy.model.clip_grad_norm_(self.optim.grad_clip)
            else:
                self.clip_gradients(opt, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if self.lr_scheduler_factory is not None:
            self.lr_schedulers().step()
        if self.ema is not None:
            self.ema.update(self.optimizer_steps_done)
        self.optimizer_steps_done += 1
        return None

    def _skip(self, cause: str) -> None:
        self.skipped_updates += 1
        self.last_skip_cause = cause

    def _check_divergence(self) -> None:
        from flowrl.config.errors import TrainingDiverged

        if self.max_consecutive_skips > 0 and self.consecutive_skips >= self.max_consecutive_skips:
            raise TrainingDiverged(
                f"{self.consecutive_skips} consecutive iterations with updates skipped for non-finite values (last: "
                f"{self.last_skip_cause} in iteration {self.iteration}); train.max_consecutive_skips is "
                f"{self.max_consecutive_skips}; the weights never took a non-finite update and the last checkpoint is kept"
            )

    @torch.no_grad()
    def _ref_mean(self, ro: Rollout, js, rows: torch.Tensor) -> torch.Tensor:
        """The reference policy's transition mean: adapter disabled, or the frozen copy."""
        if self.ref_model is not None:
            return jump_log_prob(self.ref_model, ro, js, rows).mean
        with self.model.reference_policy():
            return jump_log_prob(self.model, ro, js, rows).mean

    @torch.no_grad()
    def _view(self, name: str, x: torch.Tensor, sigma: torch.Tensor, embeds) -> torch.Tensor:
        """A no-grad velocity of a forward-process objective's view: "reference" (the adapter
        disabled, or the frozen copy) or one of the plan's policy copies."""
        if name != "reference":
            with self.copies.swapped_in(name):
                return self.model.velocity(x, sigma, embeds)
        if self.ref_model is not None:
            return self.ref_model.velocity(x, sigma, embeds)
        with self.model.reference_policy():
            return self.model.velocity(x, sigma, embeds)

    def evaluated_weights(self):
        """The weights evaluation and the saved model use: the EMA when on, else the live ones."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    # ---- validation: held-out prompts, fixed noise, every eval reward ---------------------
    @torch.no_grad()
    def evaluate(self, prompts: list[str], final: bool = False) -> dict[str, float]:
        """Every eval reward on the held-out prompts, fixed noises per prompt (the same images every
        evaluation: the grids show the policy change): {name: mean}. `final`: an endpoint
        evaluation (before / after training), `val.final_samples_per_prompt` noises per prompt.
        Logged at step = iterations completed (0 before training, N after N iterations) with the
        NFE spent so far (the x-axis curves of different methods share), each mean's bootstrap 95%
        interval over prompts (`val_ci/<name>/low|high`), and a sample grid."""
        cfg = self.val_cfg
        per_prompt = cfg.samples(final)
        self.model.eval()
        rows = [p for p in prompts for _ in range(per_prompt)]
        # full precision: the held-out numbers of a bf16-autocast run stay comparable with an fp32 run's
        precision = self.model.full_precision() if cfg.full_precision else contextlib.nullcontext()
        with self.evaluated_weights(), precision:
            images = generate(
                self.model, rows, num_steps=cfg.num_steps, shift=self.shift, seed=cfg.seed, batch_size=self.max_batch
            )
        scores = {name: reward(images, rows).float().cpu() for name, reward in self.eval_rewards.items()}
        means = {name: s.mean().item() for name, s in scores.items()}
        categories = {}  # val/category/<reward>/<category>, GenEval's overall and its interval
        for name, s in scores.items():
            categories |= category_means(self.eval_rewards[name], name, s, rows, per_prompt, cfg.ci_resamples, cfg.seed)
        self.last_categories = {k: v for k, v in categories.items() if k.startswith("val/category/")}
        # an evaluation of the endpoint size counts as the final one (the loop need not repeat it)
        self.evaluated_at, self.last_eval = self.iteration, dict(means)
        self.last_eval_final = per_prompt == cfg.samples(final=True)
        if self.logger is not None:
            metrics = {f"val/reward/{name}": v for name, v in means.items()}
            for name, s in scores.items():
                low, high = bootstrap_ci(s.view(len(prompts), per_prompt), cfg.ci_resamples, cfg.seed)
                metrics |= {f"val_ci/{name}/low": low, f"val_ci/{name}/high": high}
            metrics |= categories
            self.last_logged = metrics
            self.logger.log_metrics({**metrics, "val/nfe_total": float(self.nfe_total)}, step=self.iteration)
        if hasattr(self.logger, "run_id") and cfg.grid_prompts > 0:  # val.grid_prompts=0: no grids
            from flowrl.training.tracking import log_image_grid

            grid = images[: cfg.grid_prompts * per_prompt]
            log_image_grid(self.logger, grid, "val", step=self.iteration, nrow=per_prompt * 4)
        return means

    def replay_evaluation(self, logged: dict[str, float], logger) -> None:
        """An evaluation of these same weights read back (val.before_cache): its metrics logged at
        this step as evaluate() logged them (no image grid), the module's state as after evaluate().
        The run's logger is passed in: before trainer.validate/fit the module has none attached."""
        self.last_categories = {k: v for k, v in logged.items() if k.startswith("val/category/")}
        self.last_eval = {k.removeprefix("val/reward/"): v for k, v in logged.items() if k.startswith("val/reward/")}
        self.evaluated_at, self.last_eval_final, self.last_logged = self.iteration, True, dict(logged)
        if logger is not None:
            logger.log_metrics({**logged, "val/nfe_total": float(self.nfe_total)}, step=self.iteration)

    def validation_step(self, prompts: list[str], batch_idx: int):
        """The held-out prompts come as one batch (flowrl.train's loader): one evaluation. The
        bar and trainer.validate()'s result get the means too (not the logger: evaluate logs)."""
        means = self.evaluate(list(prompts), final=True)  # trainer.validate: before / after training
        n = len(prompts) * self.val_cfg.samples(final=True)
        for name, value in means.items():
            self.log(f"val/reward/{name}", value, batch_size=n, prog_bar=name == next(iter(means)), logger=False)
        for key, value in self.last_categories.items():
            self.log(key, value, batch_size=n, logger=False)
