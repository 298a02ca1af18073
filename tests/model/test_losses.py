"""The ISSF losses against values worked out by hand on tiny tensors (ISSF_SPEC.md 1.2, 2.5).

Expected values are literals or closed-form math written out here, never the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from issf.model.losses import attention_loss, nce, pseudo_label_loss, video_targets

LN2 = math.log(2.0)


# ------------------------------------------------------------------ NCE
def test_nce_single_label_is_minus_log_probability():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([LN2, -math.log(0.7)])
    torch.testing.assert_close(nce(probs, targets), expected)


def test_nce_normalises_multi_labels_and_is_per_video():
    probs = torch.tensor([[0.5, 0.25, 0.25]])
    # labels [1, 1, 0] -> weights 1/2, 1/2: (ln 2 + ln 4) / 2 = 1.5 ln 2
    torch.testing.assert_close(nce(probs, torch.tensor([[1.0, 1.0, 0.0]])), torch.tensor([1.5 * LN2]))
    # the same with un-normalised weights [2, 2, 0]
    torch.testing.assert_close(nce(probs, torch.tensor([[2.0, 2.0, 0.0]])), torch.tensor([1.5 * LN2]))
    assert nce(torch.rand(4, 6).softmax(-1), torch.eye(6)[:4]).shape == (4,)


def test_nce_is_positive_and_falls_as_the_labelled_probability_rises():
    targets = torch.tensor([[0.0, 1.0, 0.0]])
    low = nce(torch.tensor([[0.45, 0.1, 0.45]]), targets)
    high = nce(torch.tensor([[0.05, 0.9, 0.05]]), targets)
    torch.testing.assert_close(low, torch.tensor([-math.log(0.1)]))
    torch.testing.assert_close(high, torch.tensor([-math.log(0.9)]))
    assert 0 < high < low


def test_nce_clamps_the_log_and_ignores_an_empty_target():
    probs = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    out = nce(probs, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([-math.log(1e-12), 0.0]))


# ------------------------------------------------------------------ targets
def test_video_targets_foreground_and_background():
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    fg, bg = video_targets(labels)
    assert torch.equal(fg, torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    assert torch.equal(bg, torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]]))


# ------------------------------------------------------------------ attention loss
def test_attention_loss_mean_of_k_smallest_minus_k_largest():
    # T = 17 -> k = 17 // 8 = 2: smallest 0.05, 0.10; largest 0.95, 0.90
    a = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05, 0.95, 0.15, 0.35, 0.45, 0.55, 0.65, 0.75]])
    mask = torch.ones_like(a, dtype=torch.bool)
    torch.testing.assert_close(attention_loss(a, mask), torch.tensor([(0.05 + 0.10) / 2 - (0.95 + 0.90) / 2]))
    # ratio 4 -> k = 4: (0.05 + 0.1 + 0.15 + 0.2) / 4 - (0.95 + 0.9 + 0.8 + 0.75) / 4
    torch.testing.assert_close(attention_loss(a, mask, ratio=4.0), torch.tensor([0.125 - 0.85]))


@pytest.mark.parametrize("length, k", [(1, 1), (7, 1), (8, 1), (15, 1), (16, 2), (23, 2), (24, 3)])
def test_attention_loss_k_is_max_of_length_div_8_and_1(length, k):
    # a_t = t / 100: k smallest are 0 .. k-1, k largest are length-k .. length-1
    a = torch.arange(length, dtype=torch.float32)[None] / 100
    expected = (sum(range(k)) - sum(range(length - k, length))) / k / 100
    torch.testing.assert_close(attention_loss(a, torch.ones_like(a, dtype=torch.bool)), torch.tensor([expected]))


def test_attention_loss_ignores_padding():
    # video 0: 3 valid snippets (k = 1) padded with values outside its range on both sides
    a = torch.tensor([[0.4, 0.6, 0.5, 1.0, 0.0], [0.2, 0.9, 0.3, 0.8, 0.1]])
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    torch.testing.assert_close(attention_loss(a, mask), torch.tensor([0.4 - 0.6, 0.1 - 0.9]))


def test_attention_loss_rewards_separated_attention():
    mask = torch.ones(1, 16, dtype=torch.bool)
    flat = torch.full((1, 16), 0.5)
    separated = torch.tensor([[0.0] * 8 + [1.0] * 8])
    assert attention_loss(flat, mask).item() == 0.0
    assert attention_loss(separated, mask).item() == -1.0


# ------------------------------------------------------------------ pseudo-label loss
TAU = 0.2


def test_pseudo_label_loss_hand_values():
    # teacher [0, tau ln 3] -> softmax(teacher / tau) = [1/4, 3/4]
    teacher = torch.tensor([[[0.0, TAU * math.log(3.0)]] * 2])
    # snippet 0: student [0, 0] -> log softmax = [-ln 2, -ln 2] -> CE = ln 2
    # snippet 1: student [tau ln 3, 0] -> softmax [3/4, 1/4] -> CE = -(1/4 ln 3/4 + 3/4 ln 1/4)
    student = torch.tensor([[[0.0, 0.0], [TAU * math.log(3.0), 0.0]]])
    ce1 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    mask = torch.ones(1, 2, dtype=torch.bool)
    torch.testing.assert_close(pseudo_label_loss(student, teacher, mask, TAU), torch.tensor([(LN2 + ce1) / 2]))


def test_pseudo_label_loss_temperature_applies_to_both_sides():
    teacher = torch.tensor([[[0.0, math.log(3.0)]]])  # tau = 1: target [1/4, 3/4]
    student = torch.tensor([[[math.log(3.0), 0.0]]])  # tau = 1: prediction [3/4, 1/4]
    mask = torch.ones(1, 1, dtype=torch.bool)
    ce = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    torch.testing.assert_close(pseudo_label_loss(student, teacher, mask, 1.0), torch.tensor([ce]))
    # tau = 0.5 doubles both logit vectors: target and prediction [1/10, 9/10] and [9/10, 1/10]
    ce_half = -(0.1 * math.log(0.9) + 0.9 * math.log(0.1))
    torch.testing.assert_close(pseudo_label_loss(student, teacher, mask, 0.5), torch.tensor([ce_half]))


def test_pseudo_label_loss_is_a_mean_over_valid_snippets():
    teacher = torch.zeros(2, 3, 2)  # target [1/2, 1/2]
    student = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [50.0, -50.0]],
                            [[0.0, 0.0], [9.0, -9.0], [9.0, -9.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])  # padded rows would add a lot
    torch.testing.assert_close(pseudo_label_loss(student, teacher, mask, 1.0), torch.tensor([LN2, LN2]))


def test_pseudo_label_teacher_receives_no_gradient():
    teacher = torch.tensor([[[0.0, TAU * math.log(3.0)]]], requires_grad=True)
    student = torch.zeros(1, 1, 2, requires_grad=True)
    pseudo_label_loss(student, teacher, torch.ones(1, 1, dtype=torch.bool), TAU).sum().backward()
    assert teacher.grad is None
    # d CE / d student = (softmax(student / tau) - target) / tau = ([1/2, 1/2] - [1/4, 3/4]) / 0.2
    torch.testing.assert_close(student.grad, torch.tensor([[[1.25, -1.25]]]))


def test_pseudo_label_loss_is_minimal_when_the_student_matches_the_teacher():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(1, 5, 4, generator=g)
    mask = torch.ones(1, 5, dtype=torch.bool)
    matched = pseudo_label_loss(teacher.clone(), teacher, mask, TAU)
    for _ in range(5):
        other = teacher + 0.5 * torch.randn(1, 5, 4, generator=g)
        assert pseudo_label_loss(other, teacher, mask, TAU) > matched
