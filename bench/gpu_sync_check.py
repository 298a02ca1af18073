"""Host synchronisations of one CUDA training step, as the device reports them.

``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising CUDA call warn; the step is
expected to warn once (the salient sets' sizes, docs/framework.md "Host synchronisations"), which
tests/model/test_host_sync.py pins on the CPU by counting operations.

    python bench/gpu_sync_check.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from issf.model.config import ISSFConfig  # noqa: E402
from issf.model.network import ISSF  # noqa: E402


def main() -> int:
    device = torch.device("cuda")
    torch.manual_seed(0)
    lengths = [300, 250, 120, 64, 9]
    mask = (torch.arange(300)[None] < torch.tensor(lengths)[:, None]).to(device)
    x = torch.rand(len(lengths), 300, 2048, device=device) * mask[..., None]
    labels = torch.zeros(len(lengths), 20, device=device)
    classes = [[b % 20] for b in range(len(lengths))]
    for b, c in enumerate(classes):
        labels[b, c] = 1.0
    net = ISSF(ISSFConfig(num_classes=20)).to(device)
    net.eval()
    net.insert_into_memory(x, mask, labels, epoch=1)
    net.memory.initialized.fill_(True)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=5e-5, fused=True)

    def step() -> None:
        terms, _ = net.losses(x, mask, labels, 2, lengths=tuple(lengths), classes=classes)
        opt.zero_grad(set_to_none=True)
        terms["total"].sum().backward()
        opt.step()

    step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        step()
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    print(f"host synchronisations in one CUDA training step: {len(syncs)} (expected 1)")
    for w in syncs:
        print(f"  {w.filename}:{w.lineno}: {w.message}")
    return 0 if len(syncs) <= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
