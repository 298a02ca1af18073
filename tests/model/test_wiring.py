"""Wiring of the method (ISSF_SPEC.md 1.2): each output recomputed by hand from the network's own
weights and compared with the network.

Pinned here: inference fusion and the CAS formula, the pseudo-label teacher (saliency branch, then
the memory mix; the plots show that target) and the loss composition, the lambda mix of the two interaction units over the
salient set and its complement, the salient set (predecessor marking, wrap), memory candidates (the
salient snippets), the memory read (snippet-specific, keys of the video's classes), the evaluator's
snippet length, and batch labels by file index.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from issf.data.datamodule import FeatureDataModule
from issf.data.h5 import VideoEntry, write_feature_file
from issf.eval.evaluator import EvaluationConfig, VideoEvaluator
from issf.model.config import ISSFConfig
from issf.model.network import ISSF
from issf.model.saliency import select_salient
from tests.conftest import padded_batch

DIM, C = 8, 3
LENGTHS = [12, 7, 9]
SCALE = 5.0  # a mild cosine scale keeps the branches' softmax outputs apart (20 saturates them)


def memory_read_kwargs(mode: str) -> dict:
    """Network kwargs for a memory read ``mode``: "gt_classes" (keys of the video's classes, the
    paper's wording) or "class0" (the released code)."""
    return {"memory_read": mode}


def make_net(**kw) -> ISSF:
    torch.manual_seed(0)
    kw = {**memory_read_kwargs("gt_classes"), **kw}
    return ISSF(ISSFConfig(input_dim=DIM, embed_dim=DIM, num_classes=C, dropout=0.0, scale=SCALE, **kw)).eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, mask = padded_batch(LENGTHS, DIM)
    x = torch.randn(len(LENGTHS), max(LENGTHS), DIM, generator=torch.Generator().manual_seed(seed)) * mask[..., None]
    y = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # no video of class 0
    return x, mask, y


def fill_memory(net: ISSF, seed: int = 3) -> None:
    """Distinct slots per class, scaled so that the read attention is neither uniform nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    net.memory.slots.copy_(0.5 * torch.rand(net.memory.slots.shape, generator=g))
    net.memory.scores.copy_(torch.rand(net.memory.scores.shape, generator=g))
    net.memory.initialized.fill_(True)


# ---------------------------------------------------------------- hand versions of each step
def embed(net: ISSF, x: torch.Tensor) -> torch.Tensor:
    """F = ReLU(X W^T + b) (dropout 0)."""
    return torch.relu(x @ net.embedding.linear.weight.T + net.embedding.linear.bias)


def interaction(unit, queries: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """f_hat = f + softmax_c(W2 ReLU(W1 f)) * f over the set; out_t = sum_j softmax_j(f_t . f_hat_j) f_hat_j."""
    if len(members) == 0:
        return torch.zeros_like(queries)
    w1, w2 = unit.mlp[0].weight, unit.mlp[2].weight
    gated = members + torch.softmax(torch.relu(members @ w1.T) @ w2.T, dim=-1) * members
    return torch.softmax(queries @ gated.T, dim=-1) @ gated


def cosine_logits(net: ISSF, z: torch.Tensor) -> torch.Tensor:
    """sigma * cos(z_t, c_k) against the C + 1 class centres."""
    centres = net.head.centres
    return SCALE * (z / (z.norm(dim=-1, keepdim=True) + 1e-9)) @ (centres / (centres.norm(dim=-1, keepdim=True) + 1e-9)).T


def hand_nce(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -(labels / labels.sum(-1, keepdim=True) * torch.log(p)).sum(-1)


def hand_pl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    ce = -(torch.softmax(teacher / tau, -1) * torch.log_softmax(student / tau, -1)).sum(-1)
    return (ce * mask).sum(1) / mask.sum(1)


def hand_att(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = []
    for a, m in zip(attention, mask):
        v = torch.sort(a[m]).values
        k = max(len(v) // 8, 1)
        out.append(v[:k].mean() - v[-k:].mean())
    return torch.stack(out)


def padded(out, packed: torch.Tensor) -> torch.Tensor:
    return out.packing.pad(packed)


# ---------------------------------------------------------------- inference
def test_fusion_is_06_base_04_saliency_and_cas_is_mixed_softmax_times_base_attention():
    net = make_net()
    x, mask, _ = inputs()
    scores, cas, out = net.predict(x, mask)
    base, sal = out.base, out.saliency
    # the branches and the attention differ enough for a wrong weight or a missing factor to show
    assert (base.video_fg - sal.video_fg).abs().max() > 0.02
    assert (1 - base.attention[mask]).abs().max() > 0.3
    torch.testing.assert_close(scores, 0.6 * base.video_fg[:, :C] + 0.4 * sal.video_fg[:, :C])
    mixed = 0.6 * torch.softmax(base.logits, -1) + 0.4 * torch.softmax(sal.logits, -1)
    expected = mixed[..., :C] * base.attention[..., None] * mask[..., None]
    torch.testing.assert_close(cas, expected)
    assert torch.all(cas[~mask] == 0)


def test_base_branch_alone_uses_its_softmax_times_attention():
    net = make_net(saliency=False, memory=False, pseudo_labels=False)
    x, mask, _ = inputs()
    scores, cas, out = net.predict(x, mask)
    torch.testing.assert_close(scores, out.base.video_fg[:, :C])
    torch.testing.assert_close(cas, torch.softmax(out.base.logits, -1)[..., :C] * out.base.attention[..., None]
                               * mask[..., None])


# ---------------------------------------------------------------- saliency and refinement
def test_differences_and_salient_set_of_the_network():
    net = make_net()
    x, mask, _ = inputs()
    out = net(x, mask)
    f = embed(net, x)
    for b, n in enumerate(LENGTHS):
        prev = torch.cat([torch.zeros(1, DIM), f[b, : n - 1]])
        torch.testing.assert_close(out.differences[b, :n], (f[b, :n] - prev).abs().sum(-1))
    assert torch.equal(out.salient, select_salient(out.differences, mask, 0.5, wrap_last=True))


def test_each_selected_snippet_marks_its_predecessor():
    # T = 10, p = 0.5 -> K = floor(5) - 1 = 4: the largest differences are at 1, 3, 6, 8
    diff = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.3, 0.05, 0.7, 0.15, 0.6, 0.25]])
    mask = torch.ones(1, 10, dtype=torch.bool)
    expected = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(select_salient(diff, mask, 0.5), expected)
    # p = 0.3 -> K = floor(3) - 1 = 2: snippets 1 and 3 with their predecessors 0 and 2
    expected = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(select_salient(diff, mask, 0.3), expected)


def test_a_selected_first_snippet_wraps_to_the_last_valid_snippet():
    # video 0 (10 snippets, K = 4): 0, 3, 6, 8 selected; video 1 (6 valid, K = 2): 0 and 2 selected
    diff = torch.tensor([[0.9, 0.1, 0.2, 0.8, 0.3, 0.05, 0.7, 0.15, 0.6, 0.25],
                         [0.9, 0.1, 0.5, 0.2, 0.3, 0.4, 5.0, 5.0, 5.0, 5.0]])
    mask = torch.arange(10)[None] < torch.tensor([[10], [6]])
    wrapped = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1, 1, 1],
                            [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(select_salient(diff, mask, 0.5, wrap_last=True), wrapped)
    plain = wrapped.clone()
    plain[0, 9] = plain[1, 5] = False
    assert torch.equal(select_salient(diff, mask, 0.5, wrap_last=False), plain)


def test_refined_features_mix_salient_and_non_salient_units_with_lambda():
    net = make_net()
    x, mask, _ = inputs()
    out = net(x, mask)
    f, fused = embed(net, x), padded(out, out.fused)
    for b, n in enumerate(LENGTHS):
        sal = out.salient[b, :n]
        assert 0 < sal.sum() < n  # both sets non-empty
        salient_part = interaction(net.salient_unit, f[b, :n], f[b, :n][sal])
        other_part = interaction(net.non_salient_unit, f[b, :n], f[b, :n][~sal])
        assert (salient_part - other_part).abs().max() > 0.05
        torch.testing.assert_close(fused[b, :n], 0.88 * salient_part + 0.12 * other_part)
    # the saliency branch is the head over these features
    torch.testing.assert_close(out.saliency.logits[0, : LENGTHS[0]], cosine_logits(net, fused[0, : LENGTHS[0]]))


# ---------------------------------------------------------------- teacher and loss composition
def test_teacher_before_the_memory_is_the_saliency_branch_and_gets_no_gradient():
    net = make_net()
    x, mask, y = inputs()
    terms, out = net.losses(x, mask, y, epoch=0)
    expected = hand_pl(out.base.logits, out.saliency.logits, mask)
    torch.testing.assert_close(terms["pl"], expected)
    # the distillation moves the base branch only: no gradient reaches the refinement units
    terms["pl"].sum().backward()
    for unit in (net.salient_unit, net.non_salient_unit):
        assert all(p.grad is None or torch.all(p.grad == 0) for p in unit.parameters())
    assert net.embedding.linear.weight.grad.abs().sum() > 0


def test_loss_composition_before_the_memory():
    net = make_net()
    x, mask, y = inputs()
    terms, out = net.losses(x, mask, y, epoch=0)
    fg, bg = torch.cat([y, torch.zeros(3, 1)], 1), torch.cat([y, torch.ones(3, 1)], 1)
    loss_fg = hand_nce(out.base.video_fg, fg) + hand_nce(out.saliency.video_fg, fg)
    loss_bg = hand_nce(out.base.video_bg, bg) + hand_nce(out.saliency.video_bg, bg)
    att = hand_att(out.base.attention, mask)
    pl_term = hand_pl(out.base.logits, out.saliency.logits, mask)
    torch.testing.assert_close(terms["fg"], loss_fg)
    torch.testing.assert_close(terms["bg"], loss_bg)
    torch.testing.assert_close(terms["att"], att)
    torch.testing.assert_close(terms["total"], loss_fg + 0.2 * loss_bg + 0.1 * att + 1.0 * pl_term)


def test_loss_composition_and_teacher_mix_with_the_memory():
    net = make_net()
    fill_memory(net)
    x, mask, y = inputs()
    terms, out = net.losses(x, mask, y, epoch=3, update_memory=False)
    mem = net.memory_branch(out, y, epoch=3, update=False)
    fg, bg = torch.cat([y, torch.zeros(3, 1)], 1), torch.cat([y, torch.ones(3, 1)], 1)
    loss_fg = hand_nce(out.base.video_fg, fg) + hand_nce(out.saliency.video_fg, fg) + 0.5 * hand_nce(mem.video_fg, fg)
    loss_bg = hand_nce(out.base.video_bg, bg) + hand_nce(out.saliency.video_bg, bg) + 0.5 * hand_nce(mem.video_bg, bg)
    teacher = 0.2 * mem.logits + 0.8 * out.saliency.logits
    assert (mem.logits - out.saliency.logits)[mask].abs().max() > 0.5
    pl_term = hand_pl(out.base.logits, teacher, mask)
    torch.testing.assert_close(terms["pl"], pl_term)
    torch.testing.assert_close(terms["fg"], loss_fg)
    torch.testing.assert_close(terms["bg"], loss_bg)
    att = hand_att(out.base.attention, mask)
    torch.testing.assert_close(terms["total"], loss_fg + 0.2 * loss_bg + 0.1 * att + 0.5 * pl_term)


@pytest.mark.parametrize("memory_initialised", [False, True])
def test_timeline_pseudo_labels_are_the_loss_target(memory_initialised):
    """The plots' pseudo-label panel shows the distillation target: softmax(S_sal / tau) before the
    memory is initialised, softmax((0.2 S_mem + 0.8 S_sal) / tau) after; the memory branch's own
    logits are returned apart."""
    from issf.train.module import ISSFModule

    module = ISSFModule(num_classes=C, input_dim=DIM, network={"embed_dim": DIM, "dropout": 0.0, "scale": SCALE})
    if memory_initialised:
        fill_memory(module.net)
    x, mask, y = inputs()
    t = LENGTHS[0]
    got = module.inspect_video(x[0, :t].numpy(), y[0].numpy())
    out = module.net.eval().forward(x[:1, :t], mask[:1, :t])
    teacher = out.saliency.logits
    if memory_initialised:
        mem = module.net.memory_branch(out, y[:1], 3, update=False)
        assert (mem.logits - out.saliency.logits).abs().max() > 0.5  # the two targets differ
        teacher = 0.2 * mem.logits + 0.8 * out.saliency.logits
        torch.testing.assert_close(torch.from_numpy(got["memory_logits"])[None], mem.logits)
    else:
        assert "memory_logits" not in got
    torch.testing.assert_close(torch.softmax(torch.from_numpy(got["pseudo_labels"]), -1)[None],
                               torch.softmax(teacher / 0.2, -1))


# ---------------------------------------------------------------- memory
def hand_read(net: ISSF, fused: torch.Tensor, classes: list[int]) -> torch.Tensor:
    keys = torch.cat([net.memory.slots[c] for c in classes])
    return torch.softmax(fused @ keys.T, dim=-1) @ keys


def memory_reads(mode: str) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """Per video of ``inputs()``: the memory branch's snippet logits, the refined features and the
    ground-truth classes, for a filled memory read in ``mode``."""
    net = make_net(**memory_read_kwargs(mode))
    fill_memory(net)
    x, mask, y = inputs()
    out = net(x, mask)
    mem = net.memory_branch(out, y, epoch=3, update=False)
    fused = padded(out, out.fused)
    return net, [(mem.logits[b, :n], fused[b, :n], torch.nonzero(y[b]).flatten().tolist())
                 for b, n in enumerate(LENGTHS)]


def test_memory_read_uses_the_video_classes_and_is_snippet_specific():
    net, videos = memory_reads("gt_classes")
    for logits, fused, classes in videos:
        read = hand_read(net, fused, classes)
        assert (read - read[:1]).abs().max() > 1e-2  # every snippet reads its own mix of keys
        torch.testing.assert_close(logits, cosine_logits(net, read))
        assert (logits - logits[:1]).abs().max() > 1e-2


def test_memory_read_in_the_released_class0_mode_uses_class0_keys():
    net, videos = memory_reads("class0")
    for logits, fused, classes in videos:
        torch.testing.assert_close(logits, cosine_logits(net, hand_read(net, fused, [0] * len(classes))))


def test_memory_candidates_are_the_salient_snippets():
    net = make_net(memory_slots=64)  # room for every candidate
    x, mask, y = inputs()
    out = net(x, mask)
    f = embed(net, x)
    net.insert_into_memory(x, mask, y, epoch=1)
    for c in range(C):
        videos = [b for b in range(len(LENGTHS)) if y[b, c] > 0]
        expected = torch.cat([f[b, :n][out.salient[b, :n]] for b, n in enumerate(LENGTHS) if b in videos]) \
            if videos else torch.zeros(0, DIM)
        stored = net.memory.slots[c][net.memory.scores[c] > 0]
        assert len(stored) == len(expected), c
        key = lambda t: t[torch.argsort(t @ torch.arange(1.0, DIM + 1))]  # noqa: E731  (row order)
        torch.testing.assert_close(key(stored), key(expected))
    # training steps offer the same candidates, video by video
    fill_memory(net)
    net.train()
    _, out = net.losses(x, mask, y, epoch=3)
    assert len(out.memory_updates) == len(LENGTHS)
    for b, (feats, scores, classes) in enumerate(out.memory_updates):
        n = LENGTHS[b]
        torch.testing.assert_close(feats, f[b, :n][out.salient[b, :n]])
        torch.testing.assert_close(scores, torch.softmax(cosine_logits(net, feats), -1))
        assert classes == torch.nonzero(y[b]).flatten().tolist()


# ---------------------------------------------------------------- evaluation: the file's snippet length
def oracle_gt_case(snippet: float):
    """One video of 100 snippets with one instance of class 0 on snippets [20, 40)."""
    from issf.data.annotations import GroundTruth

    gt = GroundTruth(["a", "b"], ["v0"], [100 * snippet], [[20 * snippet, 40 * snippet]], [0], [0])
    cas = torch.zeros(1, 100, 2)
    cas[0, 20:40, 0] = 1.0
    return gt, cas


def test_video_evaluator_converts_with_its_snippet_length():
    gt, cas = oracle_gt_case(0.5)
    evaluator = VideoEvaluator(gt, EvaluationConfig(protocol="anet"), 0.5)
    evaluator.update(torch.tensor([0]), torch.tensor([[0.9, 0.0]]), cas, torch.tensor([100]))
    dets = evaluator.detections()
    best = int(np.argmax(dets.score))
    # run [20, 40) -> [20, 41) with the official +1 end -> seconds [10.0, 20.5)
    assert (dets.start[best], dets.end[best]) == pytest.approx((10.0, 20.5))
    summary = evaluator.compute()["summary"]
    assert summary["mAP@0.7"] == pytest.approx(100.0)


def oracle_file(path, snippet: float):
    """Videos whose features are the per-snippet one-hot ground truth (train and test interleaved)."""
    rng = np.random.default_rng(0)
    videos = []
    for i in range(8):
        t = int(rng.integers(60, 120))
        feats = np.zeros((t, C), np.float32)
        segments, labels = [], []
        start = int(rng.integers(0, 10))
        while start + 12 < t:
            length, c = int(rng.integers(4, 12)), int(rng.integers(0, C))
            feats[start : start + length, c] = 1.0
            segments.append([start * snippet, (start + length) * snippet])
            labels.append(c)
            start += length + int(rng.integers(3, 15))
        videos.append(VideoEntry(f"v{i}", "test" if i % 3 else "train", t * snippet, feats,
                                 np.eye(C, dtype=np.uint8)[labels].max(0), np.array(segments), np.array(labels)))
    return write_feature_file(path, videos, list("abc"), snippet_seconds=snippet, feature_name="oracle")


def test_module_evaluates_with_the_files_snippet_length(tmp_path):
    """A perfect CAS scores 100 % at tIoU 0.7 only when seconds use the file's 0.5 s snippets."""
    from issf.train.module import ISSFModule

    dm = FeatureDataModule(str(oracle_file(tmp_path / "half.h5", 0.5)), eval_batch_size=3)
    assert dm.snippet_seconds == 0.5
    module = ISSFModule(num_classes=C, input_dim=C, network={"embed_dim": 4},
                        evaluation={"protocol": "anet", "filter_ambiguous": False})
    # the oracle network: the features are the ground truth
    module.net.predict = lambda x, mask: (x.amax(1), x * mask[..., None], None)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.test(module, datamodule=dm, verbose=False)
    assert (tmp_path / "predictions.h5").is_file()  # written into the run directory, not the cwd
    assert module.evaluators["test"].snippet_seconds == 0.5
    summary = module.evaluation_results["test"].summary
    assert summary["mAP@0.7"] == pytest.approx(100.0), summary


# ---------------------------------------------------------------- data: labels by file index
def test_batch_labels_follow_the_file_index_when_splits_interleave(tmp_path):
    rng = np.random.default_rng(1)
    subsets = ["test", "test", "train", "test", "train", "train", "test", "train", "test", "train", "train", "test"]
    videos = []
    for i, subset in enumerate(subsets):
        t = int(rng.integers(3, 30))
        feats = np.full((t, 4), float(i), np.float32)  # the features name the video
        labels = np.zeros(C, np.uint8)
        labels[[i % C, (i * 2 + 1) % C]] = 1
        videos.append(VideoEntry(f"v{i}", subset, t * 0.64, feats, labels))
    path = write_feature_file(tmp_path / "mixed.h5", videos, list("abc"), snippet_seconds=0.64, feature_name="x")
    dm = FeatureDataModule(str(path), batch_size=3, eval_batch_size=2)
    seen = {"train": set(), "test": set()}
    loaders = [("train", dm.train_dataloader()), ("test", dm.test_dataloader()), ("train", dm.memory_init_dataloader())]
    for split, loader in loaders:
        for batch in loader:
            for b in range(len(batch["index"])):
                video = int(batch["features"][b, 0, 0])
                assert subsets[video] == split
                assert torch.equal(batch["labels"][b], torch.from_numpy(videos[video].labels.astype(np.float32))), video
                seen[split].add(video)
    assert seen["train"] == {i for i, s in enumerate(subsets) if s == "train"}
    assert seen["test"] == {i for i, s in enumerate(subsets) if s == "test"}
    # and the ground truth of a split is indexed like its loader
    gt = dm.ground_truth("test")
    assert gt.video_ids == [f"v{i}" for i in dm.test_indices]
