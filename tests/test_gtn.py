"""Generic teacher training: the loss reaches every trained part, the sampler follows high-KL archs,
KD loss values match hand-computed ones, SFTN keeps its one student."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from gtnpipe.config.recipes import GTNConfig, TeacherConfig, TrainConfig
from gtnpipe.data.datasets import Dataset
from gtnpipe.models.counting import count_module
from gtnpipe.models.supernet import Supernet
from gtnpipe.models.teacher import build_teacher
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import ArchConfig, TaskShape, get_space
from gtnpipe.training.gtn import ArchSampler, GenericTeacherTrainer, kd_kl, train_generic_teacher

SPACE = get_space("mbv3-28")
TASK = TaskShape(1, (28, 28), 10)
SMALL_TEACHER = TeacherConfig(stem_width=8, widths=(16, 16, 32, 32), blocks=(1, 1, 1, 1))


def _trainer(cfg: GTNConfig, fixed_arch: ArchConfig | None = None) -> GenericTeacherTrainer:
    torch.manual_seed(0)
    return GenericTeacherTrainer(build_teacher(SMALL_TEACHER, SPACE, TASK), Supernet(SPACE, TASK), cfg,
                                 label_smoothing=0.0, fixed_arch=fixed_arch)


def test_kd_kl_matches_hand_computation() -> None:
    t = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    s = np.array([[1.0, 1.0, 0.0], [-1.0, 2.0, 0.5]])
    tau = 2.0

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(t / tau), softmax(s / tau)
    expected = tau**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = kd_kl(torch.tensor(t), torch.tensor(s), tau)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    assert float(kd_kl(torch.tensor(t), torch.tensor(t), tau)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("point", [0, 1, 2, 3])
def test_gtn_loss_reaches_teacher_adapters_and_shared_student_weights(point: int) -> None:
    trainer = _trainer(GTNConfig(branch_points=(point,), archs_per_step=3)).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, logits = trainer(x, y)
    assert logits.shape == (8, 10) and torch.isfinite(loss)
    loss.backward()

    def has_grad(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert has_grad(trainer.teacher.stem) and has_grad(trainer.teacher.head)
    # the student tail runs from stage `point` on: its blocks and the shared head learn
    assert has_grad(trainer.supernet.stages[point][0]) and has_grad(trainer.supernet.head)
    assert has_grad(trainer.supernet.stem) == (point == 0)
    for i, adapter in enumerate(trainer.adapters, start=1):
        assert has_grad(adapter) == (i == point)
    if point > 0:  # the branch's KL and CE flow back into the teacher stages it uses (SFTN's mechanism)
        trainer.zero_grad()
        branch = trainer.branch_logits(x, trainer.teacher.forward_stages(x), SPACE.smallest(), point)
        torch.nn.functional.cross_entropy(branch, y).backward()
        assert has_grad(trainer.teacher.stages[point - 1])
        assert not has_grad(trainer.teacher.head)


def test_sampler_is_a_distribution_over_the_pool() -> None:
    tiny = replace(SPACE, stages=SPACE.stages[:2], depths=(1, 2), kernel_sizes=(3, 5), expand_ratios=(3, 6))
    sampler = ArchSampler(tiny)
    torch.manual_seed(0)
    sampler.depth_logits.normal_()
    sampler.block_logits.normal_()
    stage_options = [tuple(blocks) for d in tiny.depths for blocks in itertools.product(tiny.choices, repeat=d)]
    total = sum(math.exp(float(sampler.log_prob(ArchConfig(stages)))) for stages in
                itertools.product(stage_options, repeat=2))
    assert total == pytest.approx(1.0, abs=1e-5)
    assert sampler.entropy() < sampler.max_entropy()
    assert ArchSampler(tiny).entropy() == pytest.approx(ArchSampler(tiny).max_entropy())


def test_sampler_moves_towards_high_kl_archs() -> None:
    """Constructed case: an arch's 'KL' is its share of 7x7 kernels; the distribution must learn it."""
    sampler = ArchSampler(SPACE)
    k7 = [i for i, b in enumerate(SPACE.choices) if b.kernel == 7]

    def p_k7() -> float:
        return float(sampler.block_logits.softmax(-1)[..., k7].sum(-1).mean())

    def reward(arch: ArchConfig) -> float:
        blocks = [b for s in arch.stages for b in s]
        return sum(b.kernel == 7 for b in blocks) / len(blocks)

    torch.manual_seed(0)
    start_p, start_h = p_k7(), sampler.entropy()
    assert start_p == pytest.approx(1 / 3)
    for _ in range(300):
        archs = sampler.sample(4)
        sampler.reinforce(archs, torch.tensor([reward(a) for a in archs]), lr=0.5, entropy_bonus=0.001,
                          baseline_momentum=0.9)
    assert p_k7() > 0.5  # averaged over all slots, including the rarely active 4th blocks
    assert sampler.entropy() < start_h
    torch.manual_seed(1)
    late = sampler.sample(200)
    assert np.mean([reward(a) for a in late]) > 0.55  # uniform sampling gives 1/3


def test_sampler_moves_at_the_scale_of_real_branch_kls() -> None:
    """As in training: one sampled arch a step, the default step size, and rewards that differ by 0.02 between archs
    around 0.5 (branch KLs differ by about that much). The raw score-function step left the distribution where it
    started (entropy 40.70 -> 40.69 nats in a real run); advantages in units of their running std must move it."""
    sampler, cfg = ArchSampler(SPACE), GTNConfig()
    k7 = [i for i, b in enumerate(SPACE.choices) if b.kernel == 7]

    def share_k7(arch: ArchConfig) -> float:
        blocks = [b for s in arch.stages for b in s]
        return sum(b.kernel == 7 for b in blocks) / len(blocks)

    torch.manual_seed(0)
    start_h = sampler.entropy()
    for _ in range(400):
        archs = sampler.sample(1)
        sampler.reinforce(archs, torch.tensor([0.5 + 0.02 * share_k7(archs[0])]), lr=cfg.sampler_lr,
                          entropy_bonus=cfg.entropy_bonus, baseline_momentum=cfg.baseline_momentum)
    assert float(sampler.block_logits.softmax(-1)[..., k7].sum(-1).mean()) > 0.45  # uniform: 1/3
    assert sampler.entropy() < start_h - 1.0
    probs = sampler.probabilities()
    assert probs["choices"] == [f"k{c.kernel}e{c.expand}" for c in SPACE.choices]
    assert sum(probs["choice_probs"]) == pytest.approx(1.0, abs=1e-3)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in probs["depth_probs"])


def test_uniform_sampler_never_moves() -> None:
    trainer = _trainer(GTNConfig(sampler="uniform")).train()
    torch.manual_seed(0)
    for _ in range(5):
        trainer(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    assert int(trainer.sampler.updates) == 0
    assert trainer.sampler.entropy() == pytest.approx(trainer.sampler.max_entropy())
    assert trainer.log.summary()["sampler_trace"][0]["choice_probs"] == pytest.approx(
        [1 / len(SPACE.choices)] * len(SPACE.choices), abs=1e-4)


def test_frozen_teacher_phase_trains_the_branches_alone() -> None:
    """Pre-training: no gradient and no BN update reaches the teacher, its CE leaves the loss, the branches
    (adapters, supernet) get gradients; unfrozen, the teacher trains again."""
    trainer = _trainer(GTNConfig(branch_points=(0, 2), teacher_init="vanilla", branch_pretrain_epochs=1)).train()
    trainer.freeze_teacher(True)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    torch.manual_seed(0)
    loss, t_logits = trainer(x, y)
    loss.backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.state_dict().items())  # BN statistics too
    assert not t_logits.requires_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.supernet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.adapters.parameters())
    trainer.freeze_teacher(False)
    trainer.train()
    loss, _ = trainer(x, y)
    loss.backward()
    assert all(p.grad is not None for p in trainer.teacher.parameters() if p.requires_grad)


def test_entropy_bonus_alone_keeps_the_distribution_uniform() -> None:
    sampler = ArchSampler(SPACE)
    torch.manual_seed(0)
    for _ in range(50):
        archs = sampler.sample(4)
        sampler.reinforce(archs, torch.zeros(4), lr=0.5, entropy_bonus=1.0, baseline_momentum=0.9)
    assert sampler.entropy() == pytest.approx(sampler.max_entropy(), rel=1e-6)


def test_sftn_trains_only_its_student() -> None:
    arch = SPACE.sample_many(1, seed=4)[0]
    trainer = _trainer(GTNConfig(archs_per_step=2, include_extremes=False), fixed_arch=arch)
    branches, points = trainer._plan()
    assert [a for _, a in branches] == [arch, arch] and set(points) <= set(range(4))


def test_branch_point_outside_the_space_is_refused() -> None:
    with pytest.raises(ValueError, match="branch points \\[4\\] are out of range"):
        _trainer(GTNConfig(branch_points=(0, 4)))


def test_branches_see_only_their_share_of_the_batch() -> None:
    # eval mode: BN uses running statistics, so images do not mix and the gradient shows which ones the
    # branches read. With fraction 0.25 of a batch of 8, the branch losses depend on images 0 and 1 only.
    trainer = _trainer(GTNConfig(branch_batch_fraction=0.25, branch_points=(0, 2))).train(False)
    x, y = torch.randn(8, 1, 28, 28, requires_grad=True), torch.randint(0, 10, (8,))
    loss, t_logits = trainer(x, y)
    branch_part = loss - torch.nn.functional.cross_entropy(t_logits, y)
    (grad,) = torch.autograd.grad(branch_part, x)
    per_image = grad.abs().flatten(1).sum(1)
    assert (per_image[:2] > 0).all() and (per_image[2:] == 0).all()


@pytest.mark.parametrize("into_teacher", [True, False])
def test_branch_grad_into_teacher_switch(into_teacher: bool) -> None:
    # with lambda_kl = 0 the branch part of the loss is its CE alone; it reaches the teacher's stages
    # through the adapters only when branch_grad_into_teacher is set
    trainer = _trainer(GTNConfig(branch_points=(2,), lambda_kl=0.0, branch_grad_into_teacher=into_teacher))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss, t_logits = trainer.train(False)(x, y)
    (loss - torch.nn.functional.cross_entropy(t_logits, y)).backward()
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.teacher.stages[1].parameters())
    assert reached == into_teacher
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.adapters[1].parameters())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("branch_batch_fraction", 0.0, "'branch_batch_fraction' must be in \\(0, 1\\]"),
    ("branch_batch_fraction", 1.5, "'branch_batch_fraction' must be in \\(0, 1\\]"),
    ("temperature", 0.0, "'temperature' must be > 0"),
    ("lambda_kl", -1.0, "'lambda_kl' must be a finite number >= 0"),
    ("archs_per_step", 2, "'archs_per_step' must be >= 3 \\(include_extremes = true\\)"),
    ("branch_points", (1, 1), "'branch_points' must be distinct"),
    ("finetune_epochs", 0, "'finetune_epochs' must be >= 1"),
    ("teacher_lr_scale", 0.0, "'teacher_lr_scale' must be a finite number > 0"),
    ("branch_pretrain_epochs", -1, "'branch_pretrain_epochs' must be >= 0"),
    ("branch_pretrain_epochs", 2, "needs teacher_init = \"vanilla\""),
    ("sampler", "greedy", "'sampler' must be \"uniform\" or \"learned\""),
])
def test_invalid_gtn_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GTNConfig(**{field: value})


@pytest.mark.slow
def test_short_gtn_run_learns_and_logs(fmnist_small: Dataset) -> None:
    torch.manual_seed(0)
    teacher, supernet = build_teacher(SMALL_TEACHER, SPACE, TASK), Supernet(SPACE, TASK)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, augment="none", label_smoothing=0.0)
    result, trainer = train_generic_teacher(teacher, supernet, fmnist_small, cfg, GTNConfig(), seed=0, run_id="t",
                                            progress=False)
    assert result.history[-1].train_loss < result.history[0].train_loss
    # 43.4% measured (256 test images): the floor is two binomial standard errors (3.1 points each) below it
    assert result.test_top1 > 37.0
    log = trainer.log.summary()
    assert log["steps"] == 2 * 16
    assert set(log["kl_by_student"]) == {"largest", "smallest", "sampled"}
    assert {int(p) for p in log["kl_by_branch_point"]} == {0, 1, 2, 3}
    assert log["entropy_trace"][0]["entropy_nats"] == pytest.approx(trainer.sampler.max_entropy(), rel=1e-3)
    assert int(trainer.sampler.updates) == 2 * 16
    # 3 branches per step: at most 3 largest students' worth of MACs per image, at least 2 smallest tails
    largest, smallest = count(SPACE.largest(), SPACE, TASK).macs, count(SPACE.smallest(), SPACE, TASK).macs
    assert 0.1 * smallest < log["branch_macs_per_image_per_step"] < 3 * largest


def test_branch_macs_match_a_hook_count() -> None:
    trainer = _trainer(GTNConfig())
    arch = SPACE.sample_many(1, seed=2)[0]
    x = torch.zeros(1, 1, 28, 28)
    feats = trainer.teacher.forward_stages(x)
    assert trainer.branch_macs(arch, 0, feats) == count(arch, SPACE, TASK).macs
    h = feats[1]
    adapter_macs = count_module(trainer.adapters[1], TaskShape(h.shape[1], tuple(h.shape[2:]), 10)).macs
    tail = trainer.supernet.extract(arch)
    tail_in = trainer.adapters[1](h)
    tail_macs = sum(count_module(s, TaskShape(t.shape[1], tuple(t.shape[2:]), 10)).macs
                    for s, t in _stage_inputs(tail, tail_in, start=2))
    head_in = tail_in
    for stage in tail.stages[2:]:
        head_in = stage(head_in)
    head_macs = count_module(tail.head, TaskShape(head_in.shape[1], tuple(head_in.shape[2:]), 10)).macs
    assert trainer.branch_macs(arch, 2, feats) == adapter_macs + tail_macs + head_macs


def _stage_inputs(net, x, *, start):
    out = []
    for stage in net.stages[start:]:
        out.append((stage, x))
        x = stage(x)
    return out


def test_optimizer_gives_the_teacher_its_own_learning_rate() -> None:
    from gtnpipe.errors import TrainError
    from gtnpipe.training.train import _optimizer

    trainer = _trainer(GTNConfig(teacher_lr_scale=0.1))
    optimizer = _optimizer(trainer, TrainConfig(epochs=1, lr=0.2))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr_of) == sum(1 for _ in trainer.parameters())  # every parameter, once
    assert all(lr_of[id(p)] == pytest.approx(0.02) for p in trainer.teacher.parameters())
    assert {lr_of[id(p)] for p in [*trainer.adapters.parameters(), *trainer.supernet.parameters()]} == {0.2}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert all(decay[id(p)] == (5e-4 if p.ndim > 1 else 0.0) for p in trainer.parameters())

    trainer.lr_groups = lambda: [(list(trainer.teacher.parameters()), 1.0)]  # forgets the branches
    with pytest.raises(TrainError, match="must list every trainable parameter exactly once"):
        _optimizer(trainer, TrainConfig(epochs=1))


@pytest.mark.slow
def test_pretraining_phase_then_joint_phase(fmnist_small: Dataset) -> None:
    """A real run with both phases: the pre-training epoch leaves the teacher exactly as it was (a fit of the frozen
    trainer alone shows it) and improves the whole-student branches; the joint run logs both phases."""
    from gtnpipe.training.train import fit

    torch.manual_seed(0)
    teacher, supernet = build_teacher(SMALL_TEACHER, SPACE, TASK), Supernet(SPACE, TASK)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, augment="none", label_smoothing=0.0)
    gtn = GTNConfig(teacher_init="vanilla", branch_pretrain_epochs=1, sampler="uniform")
    trainer = GenericTeacherTrainer(teacher, supernet, gtn, label_smoothing=0.0)
    trainer.freeze_teacher(True)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in supernet.state_dict().items()}
    fit(trainer, fmnist_small, cfg, seed=0, run_id="pre", loss_fn=lambda m, x, y, i: m(x, y), progress=False,
        find_unused_parameters=True, eval_model=teacher)
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(s_before[k], v) for k, v in supernet.state_dict().items())

    torch.manual_seed(0)
    teacher, supernet = build_teacher(SMALL_TEACHER, SPACE, TASK), Supernet(SPACE, TASK)
    result, trainer = train_generic_teacher(teacher, supernet, fmnist_small, cfg, gtn, seed=0, run_id="t",
                                            progress=False)
    log = trainer.log.summary()
    assert len(result.history) == 2  # one pre-training epoch + one joint epoch
    assert log["phases_first_step"] == {"pretrain": 1, "joint": 17}
    per_epoch = log["student_branch_top1_by_epoch"]
    assert set(per_epoch) == {"largest", "smallest", "sampled"} and all(len(v) == 2 for v in per_epoch.values())
    assert int(trainer.sampler.updates) == 0  # uniform


def test_supernet_phase_trains_whole_sandwich_students_on_the_whole_batch() -> None:
    """The sandwich rule: largest, smallest and uniformly random whole students (branch point 0), each on every image
    of the batch, all getting gradients into the shared weights; the teacher frozen; the learned sampling
    distribution is left as it was and not used."""
    trainer = _trainer(GTNConfig(branch_points=(1, 2), branch_batch_fraction=0.25, archs_per_step=4, supernet_epochs=1))
    trainer.sampler.block_logits[:, :, 0] = 50.0  # learned: all mass on the first (kernel, expand)
    learned = trainer.sampler.block_logits.clone()
    trainer.start_supernet_phase()
    trainer.train()
    seen: list[tuple[ArchConfig, int]] = []
    original = trainer.branch_logits

    def spy(x: torch.Tensor, feats: list[torch.Tensor], arch: ArchConfig, point: int) -> torch.Tensor:
        seen.append((arch, x.shape[0]))
        assert point == 0
        return original(x, feats, arch, point)

    trainer.branch_logits = spy  # type: ignore[method-assign]
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    torch.manual_seed(3)
    loss, _ = trainer(x, y)
    loss.backward()
    archs = [a for a, _ in seen]
    assert archs[:2] == [SPACE.largest(), SPACE.smallest()] and len(archs) == 4
    assert all(n == 16 for _, n in seen)  # the whole batch, not branch_batch_fraction of it
    first = SPACE.choices[0]
    assert any(b != first for a in archs[2:] for stage in a.stages for b in stage)  # uniform, not the learned mass
    assert torch.equal(trainer.sampler.block_logits, learned)
    assert all(p.grad is None for p in trainer.teacher.parameters())
    got = {n for n, p in trainer.supernet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for arch in (SPACE.largest(), SPACE.smallest()):  # every weight each extreme uses alone got a gradient here
        trainer.supernet.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(trainer.supernet(x, arch), y).backward()
        alone = {n for n, p in trainer.supernet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert alone and alone <= got, sorted(alone - got)[:5]


@pytest.mark.slow
def test_supernet_phase_runs_after_the_joint_phase(fmnist_small: Dataset) -> None:
    """The last phase changes the supernet and leaves the teacher as the joint phase made it."""
    fmnist_small = replace(fmnist_small, train=fmnist_small.train.take(np.arange(128)))
    torch.manual_seed(0)
    teacher, supernet = build_teacher(SMALL_TEACHER, SPACE, TASK), Supernet(SPACE, TASK)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, augment="none", label_smoothing=0.0)
    gtn = GTNConfig(supernet_epochs=1, branch_batch_fraction=0.25, sampler="uniform")
    result, trainer = train_generic_teacher(teacher, supernet, fmnist_small, cfg, gtn, seed=0, run_id="sn",
                                            progress=False)
    log = trainer.log.summary()
    assert len(result.history) == 2 and log["phases_first_step"] == {"joint": 1, "supernet": 5}
    torch.manual_seed(0)
    joint_only_teacher, joint_only_supernet = build_teacher(SMALL_TEACHER, SPACE, TASK), Supernet(SPACE, TASK)
    train_generic_teacher(joint_only_teacher, joint_only_supernet, fmnist_small, cfg, replace(gtn, supernet_epochs=0),
                          seed=0, run_id="sn", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), joint_only_teacher.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(supernet.state_dict().values(),
                                                    joint_only_supernet.state_dict().values()))


def test_supernet_phase_without_the_sandwich_trains_random_students_only() -> None:
    trainer = _trainer(GTNConfig(archs_per_step=3, supernet_epochs=1, supernet_sandwich=False))
    trainer.start_supernet_phase()
    torch.manual_seed(0)
    branches, points = trainer._plan()
    assert [kind for kind, _ in branches] == ["sampled"] * 3 and points == [0, 0, 0]
