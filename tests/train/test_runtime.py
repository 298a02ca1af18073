"""The process-wide CPU settings are applied only when the network runs on the CPU."""

from __future__ import annotations

import inspect

import pytest
import torch

from issf.train import runtime


@pytest.mark.parametrize(("accelerator", "cuda", "applied"), [
    ("cpu", False, True), ("cpu", True, True), ("gpu", True, False), ("cuda", True, False),
    ("auto", False, True), ("auto", True, False),
])
def test_cpu_settings_only_for_cpu_training(monkeypatch, accelerator, cuda, applied):
    calls = []
    monkeypatch.setattr(runtime, "configure_cpu", lambda: calls.append(1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.configure_for(accelerator) is applied
    assert len(calls) == int(applied)


def test_tasks_apply_cpu_settings_by_accelerator():
    """The training and evaluation tasks go through configure_for with the trainer's accelerator."""
    from issf.app import tasks

    for task in (tasks.task_train, tasks.task_eval):
        source = inspect.getsource(task)
        assert "configure_for(" in source and "configure_cpu(" not in source, task.__name__
