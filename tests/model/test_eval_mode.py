"""Dropout > 0 is off at evaluation: in eval mode the network is deterministic and equals the same
weights without dropout (every other network test uses dropout 0)."""

from __future__ import annotations

import numpy as np
import torch

from issf.model.config import ISSFConfig
from issf.model.network import ISSF
from tests.conftest import padded_batch

SETTINGS = dict(num_classes=3, input_dim=8, embed_dim=16)


def twins(dropout: float = 0.6) -> tuple[ISSF, ISSF]:
    torch.manual_seed(0)
    with_dropout = ISSF(ISSFConfig(dropout=dropout, **SETTINGS))
    without = ISSF(ISSFConfig(dropout=0.0, **SETTINGS))
    without.load_state_dict(with_dropout.state_dict())
    return with_dropout, without


def test_eval_mode_is_deterministic_and_equals_the_network_without_dropout():
    net, plain = twins()
    x, mask = padded_batch([12, 7, 20], 8, seed=3)
    net.eval()
    plain.eval()
    first, second, reference = net.predict(x, mask), net.predict(x, mask), plain.predict(x, mask)
    for a, b, c in zip(first[:2], second[:2], reference[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(first[2].salient, reference[2].salient)


def test_dropout_acts_in_training_mode():
    net, plain = twins()
    x, mask = padded_batch([12, 7, 20], 8, seed=3)
    net.train()
    a = net.forward(x, mask).base.logits
    b = net.forward(x, mask).base.logits
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, plain.train().forward(x, mask).base.logits)


def test_inspect_video_evaluates_in_eval_mode_and_restores_the_mode():
    from issf.train.module import ISSFModule

    torch.manual_seed(1)
    module = ISSFModule(num_classes=3, input_dim=8, network={"embed_dim": 16, "dropout": 0.6, "memory": False})
    plain = ISSFModule(num_classes=3, input_dim=8, network={"embed_dim": 16, "dropout": 0.0, "memory": False})
    plain.load_state_dict(module.state_dict())
    features = np.random.default_rng(0).random((15, 8)).astype(np.float32)
    module.train()
    got = module.inspect_video(features)
    assert module.net.training  # the mode it was in
    again = module.inspect_video(features)
    expected = plain.inspect_video(features)
    for key in ("video_scores", "cas", "attention", "salient"):
        np.testing.assert_array_equal(got[key], again[key], err_msg=key)
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
