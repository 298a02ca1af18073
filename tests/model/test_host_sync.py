"""A training step's host synchronisations: the points where an accelerator would have to stop and
report a value to Python. Counted on the CPU through the operations that force one on a device."""

from __future__ import annotations

import os
import traceback
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import issf
from issf.model.config import ISSFConfig
from issf.model.network import ISSF
from issf.model.packing import Packing
from tests.conftest import padded_batch

# operations whose result size or value the host must read from the device
_READS_DEVICE = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default",
                 "aten.masked_select.default", "aten.is_nonzero.default"}


_PACKAGE = str(Path(issf.__file__).resolve().parent) + os.sep


def _issf_frame() -> str:
    """The innermost frame of the issf package (by path: the checkout itself may be named issf)."""
    frames = [f for f in traceback.extract_stack() if str(Path(f.filename).resolve()).startswith(_PACKAGE)]
    if not frames:
        return "outside issf"
    return f"{Path(frames[-1].filename).resolve().relative_to(_PACKAGE).as_posix()}:{frames[-1].lineno}"


class HostSyncCounter(TorchDispatchMode):
    """Counts, by the issf source line that caused them: scalar reads (``item``, ``bool``, ``int``),
    ``nonzero``, boolean-mask indexing and ``repeat_interleave`` without ``output_size``."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = str(func)
        reads = name in _READS_DEVICE
        if name.startswith("aten.index.Tensor") or name.startswith("aten.index_put"):
            reads = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None)
        if name.startswith("aten.repeat_interleave") and kwargs.get("output_size") is None and len(args) == 1 \
                or name == "aten.repeat_interleave.self_Tensor" and kwargs.get("output_size") is None:
            reads = True
        if reads:
            self.sites[f"{name} at {_issf_frame()}"] += 1
        return func(*args, **kwargs)


@contextmanager
def count_host_syncs():
    """Also counts ``Tensor.tolist`` and ``Tensor.numpy`` (they bypass the dispatcher)."""
    counter = HostSyncCounter()
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name: str):  # noqa: ANN202
        def read(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            counter.sites[f"Tensor.{name} at {_issf_frame()}"] += 1
            return originals[name](self, *args, **kwargs)
        return read

    try:
        for name in originals:
            setattr(torch.Tensor, name, wrap(name))
        with counter:
            yield counter
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


LENGTHS = [40, 33, 25, 12, 3]
CLASSES = 5


def _training_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, mask = padded_batch(LENGTHS, 32, seed=4)
    labels = torch.zeros(len(LENGTHS), CLASSES)
    for b in range(len(LENGTHS)):
        labels[b, b % CLASSES] = 1
    labels[1, 3] = 1
    return x, mask, labels


@pytest.mark.parametrize("settings", [{}, {"memory_read": "gt_classes", "memory_background": True}])
def test_training_step_reads_the_device_once(settings):
    """With the video lengths and classes given as host values (the training module reads them
    before the batch moves to the device), a whole training step (forward with the memory read
    and update, losses, backward, fused Adam) reads the device exactly once: the sizes of the
    salient sets, which depend on the data and shape the attention's per-video key blocks."""
    torch.manual_seed(0)
    net = ISSF(ISSFConfig(input_dim=32, embed_dim=32, num_classes=CLASSES, reduce=4, **settings))
    x, mask, labels = _training_batch()
    net.eval()
    net.insert_into_memory(x, mask, labels, epoch=1)
    net.memory.initialized.fill_(True)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    lengths = tuple(LENGTHS)
    classes = [(row > 0).nonzero().flatten().tolist() for row in labels]

    def step() -> None:
        terms, out = net.losses(x, mask, labels, epoch=2, lengths=lengths, classes=classes)
        assert out.memory_writes, "the memory branch must run in the counted step"
        optimizer.zero_grad(set_to_none=True)
        terms["total"].sum().backward()
        optimizer.step()

    step()  # warm-up
    with count_host_syncs() as counter:
        step()
    assert sum(counter.sites.values()) == 1, dict(counter.sites)
    (site,) = counter.sites
    assert site.startswith("Tensor.tolist at model/network.py"), site


def test_the_counter_sees_the_usual_culprits():
    """The counter is not blind: boolean indexing, nonzero, item and tolist each count."""
    x = torch.randn(6, 3)
    keep = x[:, 0] > 0
    with count_host_syncs() as counter:
        x[keep]
        torch.nonzero(keep)
        x.sum().item()
        x.sum(1).tolist()
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]))
    assert sum(counter.sites.values()) == 5, dict(counter.sites)


def test_packing_from_host_lengths_equals_packing_from_the_mask():
    lengths = [5, 0, 3, 7]
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    from_mask, from_host = Packing.from_mask(mask), Packing.from_mask(mask, lengths)
    assert from_host.lengths == from_mask.lengths == tuple(lengths)
    assert torch.equal(from_host.rows, from_mask.rows) and torch.equal(from_host.videos, from_mask.videos)
    padded = torch.randn(4, 7, 2)
    assert torch.equal(from_host.pack(padded), padded[mask])
    assert torch.equal(from_host.pad(from_host.pack(padded)), padded * mask[..., None])


def test_batches_carry_host_lengths_and_classes():
    """The data loader's batches hold the lengths and classes as host values, which the training
    module hands to the network (so the step never reads them from the device)."""
    from issf.data.datamodule import collate_videos

    x, mask, labels = _training_batch()
    items = [{"features": x[b, :n], "labels": labels[b], "original_length": n, "index": b}
             for b, n in enumerate(LENGTHS)]
    batch = collate_videos(items)
    assert batch["host_lengths"] == tuple(LENGTHS) == tuple(batch["lengths"].tolist())
    assert batch["host_classes"] == [[0], [1, 3], [2], [3], [4]]
