"""ISSF network: batched == one video at a time, saliency mask, memory, gradient parity, switches."""

from __future__ import annotations

import copy
import itertools
import math
import os

import pytest
import torch

from issf.model.config import CompatConfig, ISSFConfig
from issf.model.memory import SalientMemory
from issf.model.network import ISSF
from issf.model.saliency import salient_mask, temporal_difference
from tests.conftest import padded_batch
from tests.markers import requires_gpu

DIM, C = 24, 5
LENGTHS = [1, 2, 3, 4, 37, 64, 300]
# ISSF_TEST_DEVICE=cuda runs these tests on a GPU (bench/gpu_check.sh); skipped where there is none
DEVICE = torch.device(os.environ.get("ISSF_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    pytestmark = requires_gpu


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, mask = padded_batch(lengths, DIM, seed=seed)
    return x.to(DEVICE), mask.to(DEVICE)


def make_net(**kw) -> ISSF:
    torch.manual_seed(0)
    return ISSF(ISSFConfig(input_dim=DIM, embed_dim=DIM, num_classes=C, dropout=0.0, **kw)).to(DEVICE)


def labels_for(n: int) -> torch.Tensor:
    y = torch.zeros(n, C)
    y[torch.arange(n), torch.arange(n) % C] = 1
    y[0, (1 % C)] = 1  # a two-class video
    return y.to(DEVICE)


def fill_memory(net: ISSF) -> None:
    g = torch.Generator().manual_seed(3)
    net.memory.slots.copy_(torch.rand(net.memory.slots.shape, generator=g))
    net.memory.scores.copy_(torch.rand(net.memory.scores.shape, generator=g))
    net.memory.initialized.fill_(True)


def first_snippet_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Videos whose first snippet has the largest difference (so it is selected and wraps)."""
    x, mask = batch(LENGTHS, seed=1)
    x[:, 0] += 5.0
    return x * mask[..., None], mask


@pytest.mark.parametrize("batch_fn", [lambda: batch(LENGTHS), first_snippet_batch])
@pytest.mark.parametrize("read", ["gt_classes", "class0"])
def test_batched_equals_single_video(batch_fn, read):
    net = make_net(memory_read=read).eval()
    fill_memory(net)
    x, mask = batch_fn()
    y = labels_for(len(LENGTHS))
    terms, out = net.losses(x, mask, y, epoch=3, update_memory=False)
    scores, cas, _ = net.predict(x, mask)
    for i, n in enumerate(LENGTHS):
        t1, o1 = net.losses(x[i : i + 1, :n], mask[i : i + 1, :n], y[i : i + 1], epoch=3, update_memory=False)
        s1, c1, _ = net.predict(x[i : i + 1, :n], mask[i : i + 1, :n])
        assert torch.equal(out.salient[i, :n], o1.salient[0])
        for k in terms:
            assert torch.allclose(terms[k][i], t1[k][0], atol=1e-5, rtol=1e-5), (n, k)
        assert torch.allclose(out.base.logits[i, :n], o1.base.logits[0], atol=1e-5)
        assert torch.allclose(out.saliency.logits[i, :n], o1.saliency.logits[0], atol=1e-5)
        assert torch.allclose(scores[i], s1[0], atol=1e-5)
        assert torch.allclose(cas[i, :n], c1[0], atol=1e-5)
        assert torch.all(cas[i, n:] == 0)


def test_first_snippet_selected_wraps_to_last_valid_snippet():
    x, mask = first_snippet_batch()
    sal = salient_mask(x, mask, 0.5, wrap_last=True)
    for i, n in enumerate(LENGTHS):
        k = max(int(n * 0.5) - 1, 0)
        if k > 0:
            assert sal[i, 0] and sal[i, n - 1]
        assert not sal[i, n:].any()
    no_wrap = salient_mask(x, mask, 0.5, wrap_last=False)
    diff = temporal_difference(x, mask)
    for i, n in enumerate(LENGTHS):
        k = max(int(n * 0.5) - 1, 0)
        if k == 0:
            continue
        last_selected = (n - 1) in torch.topk(diff[i, :n], k).indices.tolist()
        # without the wrap the last snippet is salient only when selected itself (it has no successor)
        assert bool(no_wrap[i, n - 1]) == last_selected, n
        # the wrap adds exactly the last valid snippet and nothing else
        added = torch.nonzero(sal[i] & ~no_wrap[i]).flatten().tolist()
        assert added == ([] if last_selected else [n - 1]), n
        assert not (no_wrap[i] & ~sal[i]).any()


@pytest.mark.parametrize("seed", range(5))
def test_saliency_mask_properties(seed):
    lengths = [2, 3, 4, 5, 9, 50, 131]
    x, mask = batch(lengths, seed=seed)
    for ratio in (0.1, 0.5, 0.9):
        sal = salient_mask(x, mask, ratio)
        diff = temporal_difference(x, mask)
        for i, n in enumerate(lengths):
            k = max(int(n * ratio) - 1, 0)
            count = int(sal[i].sum())
            assert k <= count <= min(2 * k, n)
            assert not sal[i, n:].any()
            if k == 0:
                assert count == 0
            else:  # the k largest differences are salient
                top = torch.topk(diff[i, :n], k).indices
                assert sal[i, top].all()


def test_empty_salient_set_gives_zero_refined_features():
    net = make_net(non_salient_branch=False).eval()
    x, mask = batch([3])  # K = 0
    out = net(x, mask)
    assert not out.salient.any()
    assert torch.all(out.fused == 0)


def test_memory_update_keeps_top_scores_and_ema():
    mem = SalientMemory(num_classes=3, slots=2, dim=4, ema_epoch=5, schedule_epochs=10)
    feats = torch.arange(12.0).reshape(3, 4)
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.5, 0.4, 0.0]])
    mem.update(feats, scores, classes=[0], epoch=0)
    assert torch.equal(mem.scores[0], torch.tensor([0.8, 0.5]))
    assert torch.equal(mem.slots[0], feats[[1, 2]])
    assert torch.all(mem.slots[1] == 0)  # other classes untouched
    new = torch.full((1, 4), 100.0)
    mem.update(new, torch.tensor([[0.6, 0.0, 0.0]]), classes=[0], epoch=6)  # EMA epoch
    m = 0.5 * math.log(math.exp(6 / 10) + 1.0)  # 0.5 ln(e^(t/E) + 1), by hand
    expected_top = torch.stack([feats[1], new[0]])
    assert torch.allclose(mem.slots[0], m * feats[[1, 2]] + (1 - m) * expected_top)
    assert torch.allclose(mem.scores[0], torch.tensor([0.8, 0.6]))


def test_compat_class0_updates_class0_once_per_gt_class():
    net = make_net(compat=CompatConfig(memory_class0=True)).train()
    net.memory.initialized.fill_(True)
    x, mask = batch([40], seed=2)
    y = torch.zeros(1, C, device=DEVICE)
    y[0, [2, 3]] = 1
    net.losses(x, mask, y, epoch=3)
    assert net.memory.scores[0].sum() > 0
    assert torch.all(net.memory.slots[2:] == 0)
    # two updates of class 0 with the same candidates duplicate the top feature
    rows = net.memory.slots[0]
    assert any(torch.equal(rows[a], rows[b]) for a, b in itertools.combinations(range(len(rows)), 2))

    fixed = make_net(memory_read="gt_classes").train()
    fixed.memory.initialized.fill_(True)
    fixed.losses(x, mask, y, epoch=3)
    assert torch.all(fixed.memory.scores[0] == 0)
    assert fixed.memory.scores[2].sum() > 0 and fixed.memory.scores[3].sum() > 0


def test_batched_memory_updates_follow_loader_order():
    lengths = [30, 12, 45, 20]
    x, mask = batch(lengths, seed=4)
    y = labels_for(len(lengths))
    y[:, 0] = 1  # every video updates class 0, so order matters
    batched = make_net().eval()
    fill_memory(batched)
    single = copy.deepcopy(batched)
    terms, _ = batched.losses(x, mask, y, epoch=3)
    for i, n in enumerate(lengths):
        t1, _ = single.losses(x[i : i + 1, :n], mask[i : i + 1, :n], y[i : i + 1], epoch=3)
        assert torch.allclose(terms["total"][i], t1["total"][0], atol=1e-5)
    assert torch.allclose(batched.memory.slots, single.memory.slots)
    assert torch.equal(batched.memory.scores, single.memory.scores)


def test_gradient_of_summed_batch_equals_accumulated_single_steps():
    lengths = [5, 17, 33, 8, 60, 2, 41, 12, 25, 70]
    x, mask = batch(lengths, seed=5)
    y = labels_for(len(lengths))
    batched = make_net().train()  # dropout 0: identical masks by construction
    fill_memory(batched)
    single = copy.deepcopy(batched)
    opt_b = torch.optim.Adam(batched.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=5e-4)
    opt_s = torch.optim.Adam(single.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=5e-4)
    terms, _ = batched.losses(x, mask, y, epoch=3)
    terms["total"].sum().backward()
    for i, n in enumerate(lengths):
        t1, _ = single.losses(x[i : i + 1, :n], mask[i : i + 1, :n], y[i : i + 1], epoch=3)
        t1["total"].sum().backward()
    for (name, pb), ps in zip(batched.named_parameters(), single.parameters()):
        assert torch.allclose(pb.grad, ps.grad, atol=1e-5, rtol=1e-4), name
    opt_b.step()
    opt_s.step()
    for pb, ps in zip(batched.parameters(), single.parameters()):
        assert torch.allclose(pb, ps, atol=1e-6)


SWITCHES = ["saliency", "channel_interaction", "non_salient_branch", "memory", "pseudo_labels"]


@pytest.mark.parametrize("values", list(itertools.product([False, True], repeat=len(SWITCHES))))
def test_every_switch_combination_trains(values):
    flags = dict(zip(SWITCHES, values))
    if flags["memory"] and not flags["saliency"]:
        with pytest.raises(ValueError, match="memory=true needs saliency=true"):
            ISSFConfig(input_dim=DIM, embed_dim=DIM, num_classes=C, **flags)
        return
    torch.manual_seed(0)
    net = ISSF(ISSFConfig(input_dim=DIM, embed_dim=DIM, num_classes=C, dropout=0.5, **flags)).to(DEVICE).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, mask = batch([1, 2, 9, 16])
    y = labels_for(4)
    before = [p.detach().clone() for p in net.parameters()]
    for epoch in (0, 1, 2):
        if flags["memory"] and epoch == 2:
            net.eval()
            net.insert_into_memory(x, mask, y, epoch=1)
            net.memory.initialized.fill_(True)
            net.train()
        terms, _ = net.losses(x, mask, y, epoch)
        assert torch.isfinite(terms["total"]).all()
        opt.zero_grad()
        terms["total"].sum().backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    scores, cas, _ = net.eval().predict(x, mask)
    assert scores.shape == (4, C) and cas.shape == (4, 16, C)
    assert torch.isfinite(cas).all()
    if not flags["saliency"]:
        assert not hasattr(net, "salient_unit")


@pytest.mark.parametrize("length", [1, 2])
def test_very_short_videos_train_and_infer(length):
    net = make_net().train()
    fill_memory(net)
    x, mask = batch([length])
    terms, _ = net.losses(x, mask, labels_for(1), epoch=3)
    terms["total"].sum().backward()
    assert torch.isfinite(terms["total"]).all()
    scores, cas, _ = net.eval().predict(x, mask)
    assert cas.shape == (1, length, C) and torch.isfinite(cas).all()


def test_memory_is_in_the_state_dict_and_survives_a_round_trip(tmp_path):
    net = make_net()
    fill_memory(net)
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    fresh = make_net()
    assert torch.all(fresh.memory.slots == 0) and not bool(fresh.memory.initialized)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh.memory.slots, net.memory.slots)
    assert torch.equal(fresh.memory.scores, net.memory.scores)
    assert bool(fresh.memory.initialized)


def test_bf16_autocast_keeps_heads_and_losses_in_fp32():
    net = make_net().train()
    fill_memory(net)
    x, mask = batch([7, 20])
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        terms, out = net.losses(x, mask, labels_for(2), epoch=3)
    assert out.base.logits.dtype == torch.float32 and out.saliency.video_fg.dtype == torch.float32
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in terms.values())
    reference, _ = net.eval().losses(x, mask, labels_for(2), epoch=3, update_memory=False)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        mixed, _ = net.losses(x, mask, labels_for(2), epoch=3, update_memory=False)
    assert torch.allclose(mixed["total"], reference["total"], rtol=0.05, atol=0.05)


def test_scaled_cosine_gradient_matches_finite_differences():
    from issf.model.head import ScaledCosine, _normalize

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.double, generator=g).to(DEVICE).requires_grad_()
    c = torch.randn(3, 5, dtype=torch.double, generator=g).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ScaledCosine.apply(a, _normalize(b), 20.0), (x, c))
    # each output alone (the other one's gradient is None in the backward)
    for i in (0, 1):
        assert torch.autograd.gradcheck(lambda a, b, i=i: ScaledCosine.apply(a, _normalize(b), 20.0)[i], (x, c))
    scaled, raw = ScaledCosine.apply(x, _normalize(c), 20.0)
    assert torch.allclose(scaled, 20.0 * (x @ _normalize(c).T) / (x.norm(dim=-1, keepdim=True) + 1e-9))
    assert torch.allclose(raw, x @ _normalize(c).T)
    zero = torch.zeros(2, 5, device=DEVICE, requires_grad=True)  # all-zero snippets (ReLU + dropout) stay finite
    ScaledCosine.apply(zero, _normalize(c.float().detach()), 20.0)[0].sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_head_pooling_matches_pooled_features_on_both_paths():
    """Norms of the class-wise pooled features (videos of at most K snippets take the Gram-matrix
    path, longer ones pool directly) and the class-agnostic pooled feature."""
    from issf.model.head import HeadPooling

    g = torch.Generator().manual_seed(0)
    lengths = (2, 0, 4, 7, 1)  # K = 4 class-wise columns: Gram for 2, 0, 4, 1 snippets; pooling for 7
    w = torch.rand(sum(lengths), 5, dtype=torch.double, generator=g).to(DEVICE).requires_grad_()
    f = torch.randn(sum(lengths), 6, dtype=torch.double, generator=g).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: HeadPooling.apply(a, b, lengths), (w, f))
    for i in (0, 1):  # each output alone
        assert torch.autograd.gradcheck(lambda a, b, i=i: HeadPooling.apply(a, b, lengths)[i], (w, f))
    pooled = [a.T @ b for a, b in zip(w.split(lengths), f.split(lengths))]  # [K + 1, D] per video
    norms, agnostic = HeadPooling.apply(w, f, lengths)
    assert torch.allclose(norms, torch.stack([p[:-1].norm(dim=-1) for p in pooled]))
    assert torch.allclose(agnostic, torch.stack([p[-1] for p in pooled]))
    zero = torch.zeros(3, 5, dtype=torch.double, device=DEVICE, requires_grad=True)  # zero pooled rows
    HeadPooling.apply(zero, f[:3].detach(), (3,))[0].sum().backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))


def test_head_class_wise_logits_equal_the_pooled_cosine_formula():
    """video_bg = softmax_k(scale * cos(sum_t w_tk z_t, c_k)) with w the normalised class gates and
    video_fg = softmax(scale * cos(sum_t a_t z_t, c)) with a the normalised class-agnostic attention,
    values and gradients, for videos shorter and longer than the number of classes + 1."""
    from issf.model.head import ClassificationHead, _normalize
    from issf.model.packing import Packing

    torch.manual_seed(0)
    head = ClassificationHead(dim=8, num_classes=3, scale=10.0).to(DEVICE)  # fp32 inside by design
    mask = torch.zeros(3, 9, dtype=torch.bool, device=DEVICE)
    for b, n in enumerate((2, 9, 4)):
        mask[b, :n] = True
    packing = Packing.from_mask(mask)
    z = torch.relu(torch.randn(int(mask.sum()), 8, device=DEVICE)).requires_grad_()
    out = head(z, packing)
    expected, expected_fg = [], []
    for zb in z.split(packing.lengths):
        gates = torch.sigmoid(10.0 * _normalize(zb) @ _normalize(head.centres).T)  # [T, C+1]
        pooled = (gates / (gates.sum(0) + 1e-5)).T @ zb
        expected.append(torch.softmax(10.0 * (_normalize(pooled) * _normalize(head.centres)).sum(-1), -1))
        attention = torch.sigmoid(10.0 * _normalize(zb) @ _normalize(head.fg_centre).T)  # [T, 1]
        pooled_fg = (attention / (attention.sum(0) + 1e-5)).T @ zb
        expected_fg.append(torch.softmax(10.0 * _normalize(pooled_fg) @ _normalize(head.centres).T, -1)[0])
    expected, expected_fg = torch.stack(expected), torch.stack(expected_fg)
    assert torch.allclose(out.video_bg, expected, atol=1e-6)
    assert torch.allclose(out.video_fg, expected_fg, atol=1e-6)
    weights = torch.rand(expected.shape, device=DEVICE)
    params = (z, head.centres, head.fg_centre)
    got = torch.autograd.grad((out.video_bg * weights + out.video_fg * weights.flip(0)).sum(), params)
    want = torch.autograd.grad((expected * weights + expected_fg * weights.flip(0)).sum(), params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_cpu_dropout_mask_statistics_and_seeding():
    from issf.model.embedding import dropout_mask

    torch.manual_seed(5)
    mask = dropout_mask(torch.Size([1000, 1024]), 0.6, torch.device("cpu"))
    values = mask.unique()
    assert len(values) == 2 and values[0] == 0 and abs(values[1].item() - 2.5) < 1e-4  # 1 / (1 - p')
    for lane in range(4):  # every 16-bit lane of the 64-bit draws is uniform
        dropped = (mask.flatten()[lane::4] == 0).double().mean().item()
        assert abs(dropped - 0.6) < 0.003, (lane, dropped)
    assert abs(mask.mean().item() - 1.0) < 0.01
    torch.manual_seed(5)
    assert torch.equal(dropout_mask(torch.Size([1000, 1024]), 0.6, torch.device("cpu")), mask)
    assert torch.all(dropout_mask(torch.Size([9]), 1.0, torch.device("cpu")) == 0)


@pytest.mark.parametrize("weight", [1.0, 0.88, 0.0])
def test_packed_attention_matches_per_video_softmax_attention(weight):
    from issf.model.interaction import packed_attention

    g = torch.Generator().manual_seed(0)
    lengths, counts = (3, 1, 4, 2), (2, 0, 3, 1)  # the second video has an empty key set
    q = torch.randn(sum(lengths), 5, dtype=torch.double, generator=g).to(DEVICE).requires_grad_()
    k = torch.randn(sum(counts), 5, dtype=torch.double, generator=g).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: packed_attention(a, b, lengths, counts, weight), (q, k))
    rows = []
    for qv, kv in zip(q.split(lengths), k.split(counts)):
        rows.append(weight * torch.softmax(qv @ kv.T, -1) @ kv if len(kv) else torch.zeros_like(qv))
    assert torch.allclose(packed_attention(q, k, lengths, counts, weight), torch.cat(rows))
