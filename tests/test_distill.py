"""course_lib.compress.distill, against independent references: the KL divergence written out
by hand in float64, torch's ``kl_div``, the high-temperature limit of Hinton et al.'s section
2.1, and the training loop (a frozen teacher, exact resume, a student that moves towards it).

The teacher is a tiny GPT trained for a second on tokens from a Markov chain (so that it has
opinions worth distilling); the students are tinier. Nothing is downloaded.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from course_lib.checkpoint import CheckpointError, read_meta
from course_lib.compress.distill import (
    CachedDistillationLoss,
    DistillationLoss,
    TeacherTargets,
    distill,
    distill_loss,
    teacher_targets,
    topk_distill_loss,
)
from course_lib.config import TrainConfig
from course_lib.course_model import cached_train
from course_lib.data import get_batch
from course_lib.model import GPT, GPTConfig
from course_lib.train import train

V = 64
TEACHER = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)
STUDENT = dict(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16)
BAD_TEMPERATURES = [0, 0.0, -1.0, float("nan"), float("inf"), True, "2"]


def markov_tokens(n: int, seed: int) -> torch.Tensor:
    """n tokens in [0, V): token after c is perm[c] 80% of the time, else uniform."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(0))
    jumps = torch.randint(0, V, (n,), generator=g).tolist()
    follow = (torch.rand(n, generator=g) < 0.8).tolist()
    out = [0]
    for k in range(1, n):
        out.append(int(perm[out[-1]]) if follow[k] else jumps[k])
    return torch.tensor(out)


def config(**overrides) -> TrainConfig:
    defaults = dict(batch_size=8, max_steps=12, warmup_steps=2, lr=3e-3, eval_interval=4,
                    eval_steps=2, checkpoint_interval=4, device="cpu", progress=False)  # fmt: skip
    return TrainConfig(**{**defaults, **overrides})


def student(seed: int = 1, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**STUDENT, **overrides}))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and share a busy machine best."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return {"train": markov_tokens(20_000, seed=1), "val": markov_tokens(4_000, seed=2)}


@pytest.fixture(scope="module")
def trained_teacher(data) -> GPT:
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(**TEACHER, dropout=0.1))
    train(teacher, data, config(max_steps=80, batch_size=16, eval_interval=80))
    return teacher


@pytest.fixture
def teacher(trained_teacher) -> GPT:
    """A fresh copy for each test: DistillationLoss freezes the teacher it is given."""
    return copy.deepcopy(trained_teacher)


def logits_pair(*shape: int, std: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, V, generator=g) * std for _ in range(2))


def kl_by_hand(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float):
    """Σ_v p (log p - log q), averaged over positions, in float64 with plain softmax and log."""
    p = torch.softmax(teacher_logits.double() / T, dim=-1)
    q = torch.softmax(student_logits.double() / T, dim=-1)
    return (p * (torch.log(p) - torch.log(q))).sum(-1).mean()


# --- the loss against references ----------------------------------------------------------------


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_distill_loss_is_T_squared_times_the_kl_divergence(T):
    s, t = logits_pair(4, 16, std=3.0)
    expected = T**2 * kl_by_hand(s, t, T)
    assert distill_loss(s, t, T).item() == pytest.approx(expected.item(), abs=1e-6)
    assert distill_loss(s.double(), t.double(), T).item() == pytest.approx(
        expected.item(), abs=1e-12
    )


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_distill_loss_matches_torch_kl_div_over_flattened_positions(T):
    s, t = logits_pair(3, 5, 7)  # (3, 5, 7, V): any leading shape
    log_q = F.log_softmax(s.double().reshape(-1, V) / T, dim=-1)
    p = F.softmax(t.double().reshape(-1, V) / T, dim=-1)
    expected = T**2 * F.kl_div(log_q, p, reduction="batchmean")
    assert distill_loss(s, t, T).item() == pytest.approx(expected.item(), abs=1e-6)


def test_distill_loss_is_zero_for_the_same_logits_and_never_negative():
    s, _ = logits_pair(4, 16, std=5.0)
    for T in (0.5, 1.0, 2.0, 10.0):
        assert distill_loss(s, s.clone(), T).item() == pytest.approx(0.0, abs=1e-6)
    for seed in range(20):
        s, t = logits_pair(2, 8, std=0.01 + seed, seed=seed)
        assert distill_loss(s, t, T=1.0 + seed / 4).item() >= 0


def test_distill_loss_is_float32_for_bfloat16_logits():
    s, t = logits_pair(2, 8)
    loss = distill_loss(s.bfloat16(), t.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(
        distill_loss(s.bfloat16().float(), t.bfloat16().float()).item()
    )


def test_the_T_squared_factor_keeps_the_gradient_scale_across_temperatures():
    # Hinton et al., section 2.1: d KL / d z_i = (q_i - p_i) / T, and at high T (logits small
    # against T, centred) q_i - p_i ≈ (z_i - v_i) / (V T). Times T², the gradient tends to
    # (z - v) / V (per position, / N for the mean over N positions), whatever T.
    s, t = logits_pair(8, std=1.0, seed=5)  # (N, V), moderate logits
    N = s.size(0)
    d = (s - t).double()
    limit = (d - d.mean(-1, keepdim=True)) / (V * N)
    norms = {}
    for T in (1.0, 2.0, 4.0, 8.0):
        z = s.double().clone().requires_grad_()
        distill_loss(z, t.double(), T).backward()
        norms[T] = z.grad.norm().item()
        if T == 8.0:
            assert (z.grad - limit).norm() / limit.norm() < 0.15  # the next term: ~(z + v)/2T
    with_T2 = list(norms.values())
    assert max(with_T2) / min(with_T2) < 2
    assert all(0.5 < n / limit.norm().item() < 2 for n in with_T2)
    # Without the factor, the gradient of the KL alone shrinks about as 1 / T²: 64x from 1 to 8.
    raw = {T: n / T**2 for T, n in norms.items()}
    for T in raw:
        assert 0.5 / T**2 < raw[T] / raw[1.0] < 2 / T**2
    assert raw[8.0] < raw[1.0] / 32


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", BAD_TEMPERATURES)
def test_a_temperature_that_is_not_positive_and_finite_is_refused(T, teacher):
    s, t = logits_pair(2, 4)
    with pytest.raises(ValueError, match=r"expected a positive finite temperature"):
        distill_loss(s, t, T)
    with pytest.raises(ValueError, match=r"expected a positive finite temperature"):
        DistillationLoss(teacher, T=T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), None])
def test_alpha_outside_0_1_is_refused(alpha, teacher):
    with pytest.raises(ValueError, match=r"expected a weight in \[0, 1\]"):
        DistillationLoss(teacher, alpha=alpha)


VOCAB_ERROR = (
    r"the student's vocabulary \(32\) differs from the teacher's \(64\): the soft targets would "
    r"not line up; build the student with the teacher's vocab_size and tokenizer"
)


def test_a_student_with_another_vocabulary_is_refused_early(teacher, data):
    with pytest.raises(ValueError, match=VOCAB_ERROR):
        distill_loss(torch.zeros(2, 5, 32), torch.zeros(2, 5, 64))
    small = student(vocab_size=32)
    x, y = get_batch(data["train"] % 32, 2, 16, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=VOCAB_ERROR):
        DistillationLoss(teacher)(small, (x, y))
    with pytest.raises(ValueError, match=VOCAB_ERROR):
        distill(small, teacher, data, config())
    with pytest.raises(ValueError, match=r"differ in shape: give both \(\.\.\., V\)"):
        distill_loss(torch.zeros(2, 5, 64), torch.zeros(2, 4, 64))


def test_a_teacher_with_a_shorter_context_or_the_student_itself_is_refused(teacher, data):
    with pytest.raises(ValueError, match=r"longer than the teacher's context \(block_size=16\)"):
        distill(student(block_size=32), teacher, data, config())
    s = student()
    with pytest.raises(ValueError, match=r"the same model"):
        distill(s, s, data, config())


def test_batches_other_than_x_y_are_refused(teacher, data):
    x, y = get_batch(data["train"], 2, 16, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"takes batches \(x, y\)"):
        DistillationLoss(teacher)(student(), (x, y, y))


# --- the loss function of a run -------------------------------------------------------------------


def test_the_teacher_is_frozen_and_in_eval_mode(teacher, data):
    teacher.train()
    loss_fn = DistillationLoss(teacher)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x, y = get_batch(data["val"], 4, 16, torch.Generator().manual_seed(0))
    teacher.train()  # put back in train mode by someone: the loss still uses eval mode
    loss_fn(student(), (x, y)).backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


def test_alpha_mixes_the_distill_loss_and_the_next_token_loss(teacher, data):
    x, y = get_batch(data["val"], 4, 16, torch.Generator().manual_seed(0))
    net = student().eval()
    out = net(x, y)
    soft = distill_loss(out.logits, teacher.eval()(x).logits, T=3.0)
    assert torch.equal(DistillationLoss(teacher, T=3.0, alpha=0.0)(net, (x, y)), out.loss)
    assert torch.equal(DistillationLoss(teacher, T=3.0, alpha=1.0)(net, (x, y)), soft)
    mixed = DistillationLoss(teacher, T=3.0, alpha=0.25)(net, (x, y))
    assert mixed.item() == pytest.approx(0.25 * soft.item() + 0.75 * out.loss.item(), rel=1e-6)


def test_training_moves_the_student_and_leaves_the_teacher_alone(teacher, data, tmp_path):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = student()
    start = {k: v.clone() for k, v in s.state_dict().items()}
    result = train(s, data, config(checkpoint_dir=tmp_path), loss_fn=DistillationLoss(teacher))
    assert result.step == 12
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not all(torch.equal(v, s.state_dict()[k]) for k, v in start.items())
    loss = "course_lib.compress.distill.DistillationLoss(T=2, alpha=0.5)"
    assert read_meta(tmp_path)["run"]["loss"] == loss


def test_distillation_resumes_bit_for_bit(teacher, data, tmp_path):
    cfg = config(checkpoint_dir=tmp_path / "straight")
    straight = student(dropout=0.1)
    whole = distill(straight, teacher, data, cfg, T=2.0, alpha=0.7)

    cfg = replace(cfg, checkpoint_dir=tmp_path / "resumed", stop_at_step=6)
    first = distill(student(dropout=0.1), teacher, data, cfg, T=2.0, alpha=0.7)
    assert (first.step, first.stopped) == (6, "stop_at_step")
    resumed = student(seed=123, dropout=0.1)  # other weights: they must come from the checkpoint
    rest = distill(resumed, teacher, data, replace(cfg, stop_at_step=None), 2.0, 0.7, resume=True)

    assert rest.step == 12
    assert [e.get("loss") for e in rest.history] == [e.get("loss") for e in whole.history[6:]]
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_student_trained_on_soft_targets_alone_moves_towards_the_teacher(teacher, data):
    g = torch.Generator().manual_seed(7)
    held_out = [get_batch(data["val"], 16, 16, g) for _ in range(4)]

    def gap(s: GPT) -> float:
        s.eval()
        with torch.no_grad():
            return sum(distill_loss(s(x).logits, teacher(x).logits).item() for x, _ in held_out)

    s = student()
    before = gap(s)
    distill(s, teacher, data, config(max_steps=60, eval_interval=60), T=2.0, alpha=1.0)
    assert gap(s) < 0.6 * before  # about 0.42 * before


def test_cached_train_caches_a_distilled_student(teacher, data, tmp_path):
    path = tmp_path / "student"
    cfg = config(max_steps=4, eval_interval=4)
    first = cached_train(
        path, student, data, cfg, loss_fn=DistillationLoss(teacher), progress=False
    )
    again = cached_train(
        path, student, data, cfg, loss_fn=DistillationLoss(teacher), progress=False
    )
    assert first.run["loss"] == "course_lib.compress.distill.DistillationLoss(T=2, alpha=0.5)"
    sa, sb = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(CheckpointError, match=r"course_lib.compress.distill.DistillationLoss"):
        cached_train(path, student, data, cfg, progress=False)  # the next-token loss: refused
    hotter = DistillationLoss(teacher, T=4.0)  # the loss's T and alpha are part of the run
    with pytest.raises(CheckpointError, match=r"DistillationLoss\(T=4, alpha=0.5\)"):
        cached_train(path, student, data, cfg, loss_fn=hotter, progress=False)


# --- the teacher run once: top-k targets, cached --------------------------------------------------


def full_targets(teacher_logits: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token as a "top" token: log p_T (..., V) and ids (..., V)."""
    log_p = torch.log_softmax(teacher_logits / T, dim=-1)
    return log_p, torch.arange(V).expand_as(log_p)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_topk_loss_over_the_whole_vocabulary_is_the_distill_loss(T):
    student_logits, teacher_logits = logits_pair(3, 5, std=2.0, seed=3)
    log_p, ids = full_targets(teacher_logits, T)
    got = topk_distill_loss(student_logits, log_p, ids, T)
    torch.testing.assert_close(
        got, distill_loss(student_logits, teacher_logits, T), atol=1e-5, rtol=1e-5
    )
    order = torch.randperm(V, generator=torch.Generator().manual_seed(0))  # any order of the bins
    shuffled = topk_distill_loss(student_logits, log_p[..., order], ids[..., order], T)
    torch.testing.assert_close(shuffled, got, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 4, 16, 63])
def test_topk_loss_is_the_kl_of_the_merged_bins_and_never_above_the_full_one(k):
    student_logits, teacher_logits = logits_pair(4, 6, std=2.0, seed=k)
    top = torch.log_softmax(teacher_logits, -1).topk(k, -1)
    got = topk_distill_loss(student_logits, top.values, top.indices, T=1.0)
    # By hand in float64: k bins, then one bin for every other token.
    p, q = torch.softmax(teacher_logits.double(), -1), torch.softmax(student_logits.double(), -1)
    pk, qk = p.gather(-1, top.indices), q.gather(-1, top.indices)
    p_bins = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    q_bins = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    by_hand = (p_bins * (p_bins.log() - q_bins.log())).sum(-1).mean()
    torch.testing.assert_close(got.double(), by_hand, atol=1e-5, rtol=1e-4)
    assert 0 <= got <= distill_loss(student_logits, teacher_logits, 1.0) + 1e-6
    same = topk_distill_loss(teacher_logits, top.values, top.indices, T=1.0)
    assert abs(same.item()) < 1e-5  # the same beliefs: nothing to learn


def test_topk_loss_gives_the_student_a_gradient_and_checks_shapes():
    student_logits, teacher_logits = logits_pair(2, 3, seed=5)
    student_logits.requires_grad_(True)
    top = torch.log_softmax(teacher_logits, -1).topk(8, -1)
    topk_distill_loss(student_logits, top.values.half(), top.indices.short()).backward()
    assert student_logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"must both be \(\.\.\., k\) for the student's positions"):
        topk_distill_loss(student_logits[:, :2], top.values, top.indices)


def test_teacher_targets_hold_the_teachers_top_k_of_every_window(teacher, data):
    tokens = data["val"][:1_000]
    targets = teacher_targets(teacher, tokens, T=2.0, k=8, batch_size=16, progress=False)
    block = TEACHER["block_size"]
    n = (len(tokens) - 1) // block
    assert targets.log_p.shape == targets.ids.shape == (n, block, 8)
    assert targets.log_p.dtype == torch.float16 and targets.ids.dtype == torch.int16
    assert targets.T == 2.0 and targets.seconds > 0 and targets.block_size == block
    assert targets.nbytes() == n * block * 8 * 4
    j = 17
    x = tokens[j * block : (j + 1) * block][None]
    with torch.no_grad():
        want = torch.log_softmax(teacher.eval()(x).logits / 2.0, -1).topk(8, -1)
    teacher.train()
    torch.testing.assert_close(targets.log_p[j].float(), want.values[0], atol=2e-3, rtol=1e-3)
    assert torch.equal(targets.ids[j].long(), want.indices[0])
    assert teacher.training  # put back as it was


def test_teacher_target_batches_line_up_and_round_trip_through_a_file(teacher, data, tmp_path):
    tokens = data["val"][:1_000]
    targets = teacher_targets(teacher, tokens, k=4, progress=False)
    x, y, log_p, ids = targets.batches(5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 16) and log_p.shape == ids.shape == (5, 16, 4)
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = targets.batches(5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((x, y, log_p, ids), again, strict=True))
    j = torch.randint(len(targets.log_p), (5,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(log_p, targets.log_p[j]) and torch.equal(
        x, tokens[j[:, None] * 16 + torch.arange(16)]
    )
    loaded = TeacherTargets.load(targets.save(tmp_path / "targets.safetensors"))
    assert loaded.T == targets.T and loaded.seconds == targets.seconds
    for name in ("tokens", "log_p", "ids"):
        assert torch.equal(getattr(loaded, name), getattr(targets, name))


def test_teacher_targets_refuse_bad_k_and_short_streams(teacher, data):
    for k in (0, V + 1, 2.0, True):
        with pytest.raises(ValueError, match="expected an integer from 1 to the vocabulary's 64"):
            teacher_targets(teacher, data["val"], k=k, progress=False)
    with pytest.raises(ValueError, match="longer than the teacher's block_size=16"):
        teacher_targets(teacher, data["val"][:16], progress=False)


def test_a_student_trains_on_cached_targets_alone(teacher, data):
    targets = {split: teacher_targets(teacher, data[split], k=16, progress=False) for split in data}
    batches = {split: t.batches for split, t in targets.items()}
    loss_fn = CachedDistillationLoss(targets["train"].T, alpha=1.0)
    assert repr(loss_fn) == "CachedDistillationLoss(T=1, alpha=1)"
    g = torch.Generator().manual_seed(7)
    held_out = [targets["val"].batches(16, g) for _ in range(4)]

    def gap(s: GPT) -> float:
        with torch.no_grad():
            return sum(loss_fn(s.eval(), batch).item() for batch in held_out)

    s = student()
    before = gap(s)
    result = train(s, batches, config(max_steps=60, eval_interval=60), loss_fn=loss_fn)
    assert gap(s) < 0.6 * before and result.step == 60
    # alpha mixes in the next-token loss, as DistillationLoss does
    x, y, log_p, ids = held_out[0]
    with torch.no_grad():
        out = s(x, y)
        soft = topk_distill_loss(out.logits, log_p, ids)
        half = CachedDistillationLoss(1.0, alpha=0.5)(s, held_out[0])
    torch.testing.assert_close(half, 0.5 * soft + 0.5 * out.loss)
    with pytest.raises(ValueError, match="build TeacherTargets for every split"):
        loss_fn(s, (x, y))
    with pytest.raises(ValueError, match="alpha=2"):
        CachedDistillationLoss(1.0, alpha=2)
