"""A bf16-autocast training step (trainer=bf16 on a GPU; here on the CPU, where autocast also exists)."""

from __future__ import annotations

import torch

from issf.model.config import ISSFConfig
from issf.model.network import ISSF
from tests.conftest import padded_batch

LENGTHS = [30, 22, 9]


def _step(net: ISSF, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, bf16: bool):
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        terms, out = net.losses(x, mask, labels, epoch=2)
    terms["total"].sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters() if p.grad is not None}
    return terms, out, grads


def test_bf16_autocast_step_runs_and_stays_close_to_fp32():
    """Under bf16 autocast the embedding and the channel MLPs run in bf16, while the head, the
    attention softmaxes and the losses stay fp32 (the scale and the unscaled 2048-d products
    would otherwise saturate); the loss and every gradient are finite and near the fp32 step."""
    torch.manual_seed(0)
    net = ISSF(ISSFConfig(input_dim=64, embed_dim=64, num_classes=4, dropout=0.0, reduce=4))
    x, mask = padded_batch(LENGTHS, 64, seed=2)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    net.eval()
    net.insert_into_memory(x, mask, labels, epoch=1)
    net.memory.initialized.fill_(True)
    net.train()
    slots = net.memory.slots.clone()
    fp32_terms, _, fp32_grads = _step(net, x, mask, labels, bf16=False)
    net.memory.slots.copy_(slots)
    bf16_terms, out, bf16_grads = _step(net, x, mask, labels, bf16=True)

    assert out.base.logits.dtype == torch.float32 and out.base.video_fg.dtype == torch.float32
    assert out.fused.dtype == torch.float32  # the attention's output (fp32 by design)
    for name in ("fg", "bg", "att", "pl", "total"):
        assert bf16_terms[name].dtype == torch.float32 and torch.isfinite(bf16_terms[name]).all(), name
        assert torch.allclose(bf16_terms[name], fp32_terms[name], rtol=0.05, atol=0.02), name
    assert bf16_grads.keys() == fp32_grads.keys()
    for name, grad in bf16_grads.items():
        assert torch.isfinite(grad).all(), name
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), fp32_grads[name].flatten(), dim=0)
        assert cosine > 0.95, (name, float(cosine))
    # and the embedding really ran in bf16 (else this test compares fp32 with itself)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, _ = net.embedding(x[mask])
    assert hidden.dtype == torch.bfloat16
