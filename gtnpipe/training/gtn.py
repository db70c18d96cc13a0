"""Generic teacher training (GTN), and the per-student SFTN teacher it is meant to replace.

DESIGN.md gives the method. Each step:
1. the teacher runs and keeps its stage features;
2. student branches are built: the largest and smallest students plus archs sampled from a
   trainable distribution over the pool, each at a branch point i drawn from the recipe's
   list: teacher stages 1..i -> adapter (1x1 conv + BN) -> the student's stages i+1..K ->
   its head (i = 0 is the whole student, with its own stem);
3. loss = CE(teacher) + lambda_kl * mean tau^2 KL(p_T^tau || p_branch^tau)
                      + lambda_ce * mean CE(branch),
   which trains the teacher, the adapters and the shared student (supernet) weights;
4. with `sampler = "learned"`, the sampling distribution takes a REINFORCE step towards the
   archs whose branch KL was high (the students the teacher serves worst), plus an entropy
   bonus so the whole pool stays covered; with "uniform" it stays uniform (the sandwich rule).
With `branch_pretrain_epochs` > 0 a first phase trains only the supernet and adapters (the
teacher frozen, no teacher CE): the branches become students of the teacher before their KL
term starts to shape it. With `supernet_epochs` > 0 a last phase trains the supernet alone as whole
students on whole batches (the sandwich rule with in-place distillation from the frozen teacher), so
that search's inherited-weight accuracies come from subnets trained as students.
SFTN (Park et al., NeurIPS 2021) is the same training with every branch at one fixed student.
After training only the teacher is kept (and the supernet, whose weights students may inherit).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gtnpipe.config.recipes import GTNConfig, TrainConfig
from gtnpipe.data.datasets import Dataset
from gtnpipe.errors import ConfigError
from gtnpipe.models.external import HookedTeacher
from gtnpipe.models.static import StagedNet
from gtnpipe.models.supernet import Supernet
from gtnpipe.space.counting import count_parts
from gtnpipe.space.spaces import ArchConfig, Block, SearchSpace
from gtnpipe.training.train import FitResult, fit

__all__ = ["ArchSampler", "GTNLog", "GenericTeacherTrainer", "kd_kl", "train_generic_teacher"]


def kd_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 KL(p_T^tau || p_S^tau), averaged over the batch (Hinton et al. 2015)."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * temperature**2


class ArchSampler(nn.Module):
    """A factorised categorical distribution over the pool: per stage a depth, per block slot a
    (kernel, expand). Its logits are buffers moved by explicit REINFORCE steps, not by the
    network's optimiser, so they keep their own learning rate and are checkpointed with the model."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.register_buffer("depth_logits", torch.zeros(space.num_stages, len(space.depths)))
        self.register_buffer("block_logits", torch.zeros(space.num_stages, space.max_depth, len(space.choices)))
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("reward_var", torch.ones(()))  # EMA of the rewards' variance: advantages in its units
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def sample(self, n: int, *, uniform: bool = False) -> list[ArchConfig]:
        """n archs from the global torch RNG (seeded per epoch by `fit`, so resume replays them); `uniform`: from
        the uniform distribution whatever the logits learned (the supernet phase's sandwich rule)."""
        depth_logits = torch.zeros_like(self.depth_logits) if uniform else self.depth_logits
        block_logits = torch.zeros_like(self.block_logits) if uniform else self.block_logits
        depth_idx = torch.multinomial(depth_logits.softmax(-1), n, replacement=True)  # (stages, n)
        flat = block_logits.softmax(-1).reshape(-1, len(self.space.choices))
        block_idx = torch.multinomial(flat, n, replacement=True).reshape(self.space.num_stages, self.space.max_depth, n)
        archs = []
        for k in range(n):
            stages = []
            for s in range(self.space.num_stages):
                depth = self.space.depths[int(depth_idx[s, k])]
                stages.append(tuple(self.space.choices[int(block_idx[s, j, k])] for j in range(depth)))
            archs.append(ArchConfig(tuple(stages)))
        return archs

    def _log_prob(self, arch: ArchConfig, depth_logits: torch.Tensor, block_logits: torch.Tensor) -> torch.Tensor:
        depth_lp, block_lp = depth_logits.log_softmax(-1), block_logits.log_softmax(-1)
        total = depth_lp.new_zeros(())
        for s, stage in enumerate(arch.stages):
            total = total + depth_lp[s, self.space.depths.index(len(stage))]
            for j, block in enumerate(stage):
                total = total + block_lp[s, j, self.space.choices.index(Block(*block))]
        return total

    def log_prob(self, arch: ArchConfig) -> torch.Tensor:
        return self._log_prob(arch, self.depth_logits, self.block_logits)

    @staticmethod
    def _entropy(depth_logits: torch.Tensor, block_logits: torch.Tensor) -> torch.Tensor:
        def h(logits: torch.Tensor) -> torch.Tensor:
            return -(logits.softmax(-1) * logits.log_softmax(-1)).sum()

        return h(depth_logits) + h(block_logits)

    def entropy(self) -> float:
        """Entropy (nats) of the factorised distribution; its maximum is that of the uniform one."""
        return float(self._entropy(self.depth_logits, self.block_logits))

    def max_entropy(self) -> float:
        return float(self._entropy(torch.zeros_like(self.depth_logits), torch.zeros_like(self.block_logits)))

    def probabilities(self) -> dict[str, list]:
        """Per stage, the probability of each depth; per (kernel, expand) choice, its mean probability over the
        block slots (what the results show of where the distribution went)."""
        choices = self.block_logits.softmax(-1).mean(dim=(0, 1))
        return {"depths": list(self.space.depths),
                "depth_probs": [[round(float(p), 4) for p in row] for row in self.depth_logits.softmax(-1)],
                "choices": [f"k{c.kernel}e{c.expand}" for c in self.space.choices],
                "choice_probs": [round(float(p), 4) for p in choices]}

    @torch.no_grad()
    def reinforce(self, archs: list[ArchConfig], rewards: torch.Tensor, *, lr: float, entropy_bonus: float,
                  baseline_momentum: float) -> None:
        """One ascent step on E[reward] + entropy_bonus * H, by the score-function estimator. Advantages are the
        rewards minus their running mean, in units of their running standard deviation, so `lr` means the same
        whatever the rewards' scale (raw branch KLs differ from their mean by ~0.05: the unscaled step left the
        distribution where it started, entropy 40.70 -> 40.69 nats)."""
        if not archs:
            return
        rewards = rewards.detach().float().to(self.baseline.device)
        if int(self.updates) == 0:
            self.baseline.copy_(rewards.mean())
        advantages = (rewards - self.baseline) / self.reward_var.clamp_min(1e-12).sqrt()
        self.reward_var.mul_(baseline_momentum).add_((1 - baseline_momentum) * ((rewards - self.baseline) ** 2).mean())
        with torch.enable_grad():
            depth = self.depth_logits.detach().clone().requires_grad_(True)
            block = self.block_logits.detach().clone().requires_grad_(True)
            objective = sum(a * self._log_prob(arch, depth, block) for a, arch in zip(advantages, archs)) / len(archs)
            objective = objective + entropy_bonus * self._entropy(depth, block)
            g_depth, g_block = torch.autograd.grad(objective, (depth, block))
        self.depth_logits.add_(lr * g_depth)
        self.block_logits.add_(lr * g_block)
        self.baseline.mul_(baseline_momentum).add_((1 - baseline_momentum) * rewards.mean())
        self.updates.add_(1)


@dataclass
class GTNLog:
    """What the run looked like: sampler entropy and branch KL over training (not checkpointed:
    after a resume it covers the steps this process ran)."""

    log_every_steps: int = 20
    steps_per_epoch: int = 0  # set by train_generic_teacher: the per-epoch branch top-1 needs it
    steps: int = 0
    entropy: list[tuple[int, float]] = field(default_factory=list)
    probabilities: list[tuple[int, dict[str, list]]] = field(default_factory=list)
    phases: dict[str, int] = field(default_factory=dict)  # phase -> its first step
    student_top1: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # kind -> (step, batch top-1 %)
    kl_by_point: dict[int, list[float]] = field(default_factory=dict)
    kl_by_kind: dict[str, list[float]] = field(default_factory=dict)
    branch_macs: float = 0.0  # per teacher image, summed over steps: the student side of the training FLOPs

    def record(self, step_kls: list[tuple[str, int, float]], sampler: ArchSampler | None, branch_macs: float,
               student_top1: list[tuple[str, float]] | None = None) -> None:
        """One step: each branch's (kind, point, KL), the sampler (None for SFTN), the branches' MACs per teacher
        image, and the batch top-1 of each branch at point 0 (a whole student on the supernet's weights)."""
        self.steps += 1
        self.branch_macs += branch_macs
        for kind, point, kl in step_kls:
            self.kl_by_point.setdefault(point, []).append(kl)
            self.kl_by_kind.setdefault(kind, []).append(kl)
        for kind, top1 in student_top1 or []:
            self.student_top1.setdefault(kind, []).append((self.steps, top1))
        if sampler is not None and (self.steps == 1 or self.steps % self.log_every_steps == 0):
            self.entropy.append((self.steps, sampler.entropy()))
            self.probabilities.append((self.steps, sampler.probabilities()))

    def start_phase(self, name: str) -> None:
        self.phases[name] = self.steps + 1

    def summary(self) -> dict[str, Any]:
        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else float("nan")

        def halves(values: list[float]) -> dict[str, float]:
            half = len(values) // 2
            return {"first_half": mean(values[:half]), "second_half": mean(values[half:]), "count": len(values)}

        def per_epoch(points: list[tuple[int, float]]) -> list[float]:
            if not self.steps_per_epoch:
                return []
            epochs = -(-self.steps // self.steps_per_epoch)
            return [round(mean([v for s, v in points if (s - 1) // self.steps_per_epoch == e]), 2) for e in range(epochs)]

        return {
            "steps": self.steps,
            "phases_first_step": dict(self.phases),
            "branch_macs_per_image_per_step": self.branch_macs / max(self.steps, 1),
            "entropy_trace": [{"step": s, "entropy_nats": e} for s, e in self.entropy],
            "sampler_trace": [{"step": s, **p} for s, p in self.probabilities],
            # train-batch top-1 (%) of the whole-student branches (point 0), per epoch of this process, by kind
            "student_branch_top1_by_epoch": {k: per_epoch(v) for k, v in sorted(self.student_top1.items())},
            "kl_by_branch_point": {str(p): halves(v) for p, v in sorted(self.kl_by_point.items())},
            "kl_by_student": {k: halves(v) for k, v in sorted(self.kl_by_kind.items())},
        }


class GenericTeacherTrainer(nn.Module):
    """Teacher + adapters + supernet branches; `forward(x, y)` returns (loss, teacher logits).

    Args:
        fixed_arch: train an SFTN teacher for this one student instead of a generic teacher.
    """

    def __init__(self, teacher: StagedNet | HookedTeacher, supernet: Supernet, cfg: GTNConfig, *, label_smoothing: float,
                 fixed_arch: ArchConfig | None = None) -> None:
        super().__init__()
        space = supernet.space
        bad = [p for p in cfg.branch_points if p >= space.num_stages]
        if bad:
            raise ValueError(f"branch points {bad} are out of range: the space has {space.num_stages} stages (0..."
                             f"{space.num_stages - 1})")
        self.teacher, self.supernet, self.cfg = teacher, supernet, cfg
        self.label_smoothing = label_smoothing
        self.fixed_arch = space.validate(fixed_arch) if fixed_arch is not None else None
        if isinstance(teacher, StagedNet):  # our own teacher: its stages line up with the space's
            teacher_widths = [stage[-1].bn2.num_features for stage in teacher.stages]  # type: ignore[index]
            self.adapters = nn.ModuleList(
                nn.Sequential(nn.Conv2d(teacher_widths[i - 1], space.stages[i - 1].width, 1, bias=False),
                              nn.BatchNorm2d(space.stages[i - 1].width))
                for i in range(1, space.num_stages)
            )
        else:  # a user's teacher: its stage features resampled to each student stage's resolution, then 1x1 conv + BN
            self.adapters = _resampling_adapters(teacher, supernet)
        self.sampler = ArchSampler(space)
        self.log = GTNLog()
        self.teacher_frozen = False

    def start_supernet_phase(self) -> None:
        """From here on (recipe [gtn] supernet_epochs): whole students only (branch point 0), each on the whole batch,
        the non-extreme ones uniformly random, the teacher frozen: the sandwich rule with in-place distillation."""
        self.cfg = replace(self.cfg, branch_points=(0,), branch_batch_fraction=1.0, sampler="uniform",
                           include_extremes=self.cfg.supernet_sandwich)
        self.freeze_teacher(True)

    def freeze_teacher(self, frozen: bool) -> None:
        """Frozen: the teacher runs in eval mode without gradients and its own CE leaves the loss (the pre-training
        phase); the optimizer then holds the branches alone."""
        self.teacher_frozen = frozen
        for p in self.teacher.parameters():
            p.requires_grad_(not frozen)

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The teacher at `teacher_lr_scale` x the recipe's learning rate, adapters and supernet at 1x
        (read by `train.fit`'s optimizer)."""
        branches = [*self.adapters.parameters(), *self.supernet.parameters()]
        return [(list(self.teacher.parameters()), self.cfg.teacher_lr_scale), (branches, 1.0)]

    def _plan(self) -> tuple[list[tuple[str, ArchConfig]], list[int]]:
        """(kind, arch) of each branch this step, and its branch point."""
        space, cfg = self.supernet.space, self.cfg
        if self.fixed_arch is not None:
            branches = [("fixed", self.fixed_arch)] * cfg.archs_per_step
        else:
            branches = [("largest", space.largest()), ("smallest", space.smallest())] if cfg.include_extremes else []
            # "uniform" never moves the logits, and the supernet phase ignores what a "learned" run moved them to
            branches += [("sampled", a) for a in self.sampler.sample(cfg.archs_per_step - len(branches),
                                                                     uniform=cfg.sampler == "uniform")]
        choice = torch.randint(len(cfg.branch_points), (len(branches),))
        return branches, [cfg.branch_points[int(c)] for c in choice]

    def branch_macs(self, arch: ArchConfig, point: int, teacher_feats: list[torch.Tensor]) -> int:
        """MACs per image of one branch: the adapter plus the student's part of it."""
        parts = count_parts(arch, self.supernet.space, self.supernet.task)
        if point == 0:
            return parts.total().macs
        feat = teacher_feats[point - 1]
        adapter = feat.shape[1] * feat.shape[2] * feat.shape[3] * self.supernet.space.stages[point - 1].width
        return adapter + parts.tail(point).macs

    def branch_logits(self, x: torch.Tensor, teacher_feats: list[torch.Tensor], arch: ArchConfig,
                      point: int) -> torch.Tensor:
        if point == 0:
            return self.supernet(x, arch)
        return self.supernet.forward_from(self.adapters[point - 1](teacher_feats[point - 1]), arch, start_stage=point)

    def _teacher_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The teacher's stage features (feats[i - 1] feeds branch point i) and its logits."""
        if isinstance(self.teacher, HookedTeacher):
            return self.teacher.features_and_logits(x)
        feats = self.teacher.forward_stages(x)
        return feats, self.teacher.head(feats[-1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.teacher_frozen:
            self.teacher.train(False)
            with torch.no_grad():
                feats, t_logits = self._teacher_outputs(x)
        else:
            feats, t_logits = self._teacher_outputs(x)
        branches, points = self._plan()
        # the batch is shuffled, so its first n images are a random subset for the branches
        n = max(1, round(self.cfg.branch_batch_fraction * x.shape[0]))
        bx, by, b_feats, bt_logits = x[:n], y[:n], [f[:n] for f in feats], t_logits[:n]
        if not self.cfg.branch_grad_into_teacher:
            b_feats = [f.detach() for f in b_feats]
        kls, ces, student_top1 = [], [], []
        for (kind, arch), point in zip(branches, points):
            b_logits = self.branch_logits(bx, b_feats, arch, point)
            kls.append(kd_kl(bt_logits, b_logits, self.cfg.temperature))
            ces.append(F.cross_entropy(b_logits, by, label_smoothing=self.label_smoothing))
            if point == 0:
                student_top1.append((kind, 100.0 * float((b_logits.detach().argmax(1) == by).float().mean())))
        loss = self.cfg.lambda_kl * torch.stack(kls).mean() + self.cfg.lambda_ce * torch.stack(ces).mean()
        if not self.teacher_frozen:
            loss = loss + F.cross_entropy(t_logits, y, label_smoothing=self.label_smoothing)
        if self.training:
            step_kls = [k.item() for k in kls]
            sampled = [(arch, kl) for (kind, arch), kl in zip(branches, step_kls) if kind == "sampled"]
            if sampled and self.cfg.sampler == "learned":
                self.sampler.reinforce([a for a, _ in sampled], torch.tensor([k for _, k in sampled]),
                                       lr=self.cfg.sampler_lr, entropy_bonus=self.cfg.entropy_bonus,
                                       baseline_momentum=self.cfg.baseline_momentum)
            self.log.record([(kind, p, k) for (kind, _), p, k in zip(branches, points, step_kls)],
                            self.sampler if self.fixed_arch is None else None,
                            sum(self.branch_macs(a, p, feats) for (_, a), p in zip(branches, points)) * n / x.shape[0],
                            student_top1)
        return loss, t_logits


class Resample(nn.Module):
    """A feature map to `size` (H, W): adaptive average pooling to shrink, bilinear interpolation to grow."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) == self.size:
            return x
        if x.shape[2] >= self.size[0] and x.shape[3] >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def _stage_sizes(supernet: Supernet) -> list[tuple[int, int]]:
    """Each student stage's output (H, W): every stride-s convolution (padding k // 2) gives ceil(side / s)."""
    space, (h, w) = supernet.space, supernet.task.image_hw
    h, w = -(-h // space.stem_stride), -(-w // space.stem_stride)
    sizes = []
    for spec in space.stages:
        h, w = -(-h // spec.stride), -(-w // spec.stride)
        sizes.append((h, w))
    return sizes


def _resampling_adapters(teacher: HookedTeacher, supernet: Supernet) -> nn.ModuleList:
    """One adapter per boundary between the space's stages, from the teacher's named stage there (probed once)."""
    space, task = supernet.space, supernet.task
    if len(teacher.stage_names) != space.num_stages - 1:
        raise ConfigError(f"GTN fine-tuning needs {space.num_stages - 1} teacher stages for space {space.name!r} (one per "
                          f"boundary between its {space.num_stages} stages, whose outputs are "
                          f"{', '.join(f'{s.width}@{h}x{w}' for s, (h, w) in zip(space.stages, _stage_sizes(supernet)))}),"
                          f" got {len(teacher.stage_names)}: {list(teacher.stage_names)}")
    with torch.no_grad():
        was = teacher.training
        feats, _ = teacher.train(False).features_and_logits(torch.zeros(2, task.in_channels, *task.image_hw))
        teacher.train(was)
    sizes = _stage_sizes(supernet)
    return nn.ModuleList(
        nn.Sequential(Resample(sizes[i - 1]), nn.Conv2d(feats[i - 1].shape[1], space.stages[i - 1].width, 1, bias=False),
                      nn.BatchNorm2d(space.stages[i - 1].width))
        for i in range(1, space.num_stages))


def train_generic_teacher(
    teacher: StagedNet | HookedTeacher,
    supernet: Supernet,
    data: Dataset,
    train_cfg: TrainConfig,
    gtn_cfg: GTNConfig,
    *,
    seed: int,
    run_id: str,
    checkpoint_dir: Path | None = None,
    fixed_arch: ArchConfig | None = None,
    progress: bool = True,
    device: torch.device | None = None,
) -> tuple[FitResult, GenericTeacherTrainer]:
    """Train `teacher` (and the shared `supernet` weights) in place as a GTN, or as an SFTN teacher
    for `fixed_arch`: first `gtn_cfg.branch_pretrain_epochs` with the teacher frozen (the branches alone), then
    `train_cfg.epochs` jointly. Each phase checkpoints in its own folder, so an interrupted run resumes in either.
    Returns the fit result (teacher top-1; the history of both phases) and the trainer (its log and sampler)."""
    trainer = GenericTeacherTrainer(teacher, supernet, gtn_cfg, label_smoothing=train_cfg.label_smoothing,
                                    fixed_arch=fixed_arch)
    trainer.log.steps_per_epoch = -(-len(data.train) // train_cfg.batch_size)
    what = "sftn teacher" if fixed_arch else "gtn teacher"

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model(x, y)

    def phase(name: str, cfg: TrainConfig, frozen: bool) -> FitResult:
        if frozen or trainer.teacher_frozen:  # leaves a teacher's own requires_grad flags alone when never frozen
            trainer.freeze_teacher(frozen)
        trainer.log.start_phase(name)
        return fit(trainer, data, cfg, seed=seed, run_id=f"{run_id}:{name}", loss_fn=loss_fn, progress=progress,
                   checkpoint_dir=checkpoint_dir / name if checkpoint_dir is not None else None,
                   description=f"{what} ({name})", find_unused_parameters=True, eval_model=teacher, device=device)

    def frozen_teacher_cfg(epochs: int) -> TrainConfig:
        """A phase of `epochs` with the teacher frozen: its BN statistics stay (no PreciseBN), warm-up at most half."""
        return replace(train_cfg, epochs=epochs, precise_bn_images=0, warmup_epochs=min(train_cfg.warmup_epochs, epochs / 2))

    history: tuple = ()
    if gtn_cfg.branch_pretrain_epochs:
        history = phase("pretrain", frozen_teacher_cfg(gtn_cfg.branch_pretrain_epochs), frozen=True).history
    result = phase("joint", train_cfg, frozen=False)
    history += result.history
    if gtn_cfg.supernet_epochs:
        trainer.start_supernet_phase()
        history += phase("supernet", frozen_teacher_cfg(gtn_cfg.supernet_epochs), frozen=True).history
    return replace(result, history=history), trainer
