"""Optimizer wiring: the paper's Adam with coupled L2 weight decay and the recipe's betas and eps,
checked against a hand-computed Adam step (not only by the class name); the config's optimizer is a
Hydra partial, so another torch.optim class is one override away."""

from __future__ import annotations

import functools

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from issf.app.build import validate_config
from issf.train.module import ISSFModule
from tests.conftest import compose_cfg

NETWORK = {"embed_dim": 4, "memory": False}


def module(optimizer: dict | None) -> ISSFModule:
    return ISSFModule(num_classes=2, input_dim=3, network=NETWORK, optimizer=optimizer)


def configured_module(cfg) -> ISSFModule:
    """The module as the app builds it from the composed config (issf.app.build.build_module)."""
    return hydra.utils.instantiate(cfg.model, num_classes=2, input_dim=3, network=NETWORK)


@pytest.mark.parametrize("experiment", ["thumos_full", "synthetic"])
def test_the_recipe_optimizer_is_adam_with_its_betas_eps_and_coupled_weight_decay(tmp_path, experiment):
    cfg = compose_cfg(tmp_path, f"experiment={experiment}")
    recipe = OmegaConf.to_container(cfg.model.optimizer, resolve=True)
    assert list(recipe["betas"]) == [0.9, 0.99] and recipe["weight_decay"] == 5e-4
    assert recipe.get("eps", 1e-8) == 1e-8
    if experiment == "thumos_full":
        assert recipe["lr"] == 5e-5
    # the recipe as the app builds it, and the library's own defaults (no Hydra)
    for built, lr in ((configured_module(cfg), recipe["lr"]), (module(None), 5e-5)):
        opt = built.configure_optimizers()
        assert type(opt) is torch.optim.Adam  # not AdamW: L2 decay through the gradient
        group = opt.param_groups[0]
        assert group["lr"] == lr and tuple(group["betas"]) == (0.9, 0.99)
        assert group["eps"] == 1e-8 and group["weight_decay"] == 5e-4
        assert not group.get("decoupled_weight_decay", False) and not group["amsgrad"]


def reference_adam(p: np.ndarray, grads: list[np.ndarray], lr: float, betas: tuple[float, float], eps: float,
                   weight_decay: float) -> np.ndarray:
    """Adam with coupled L2 weight decay (the decay is added to the gradient), in float64."""
    b1, b2 = betas
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**t) * m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
    return p


@pytest.mark.parametrize("fused", [True, False])
def test_three_steps_equal_hand_computed_adam_with_coupled_weight_decay(fused):
    settings = {"lr": 0.01, "betas": [0.5, 0.75], "eps": 0.05, "weight_decay": 0.3, "fused": fused}
    net_module = module(settings)
    opt = net_module.configure_optimizers()
    params = [p for p in net_module.net.parameters() if p.requires_grad]
    rng = np.random.default_rng(0)
    start = [rng.uniform(-1, 1, tuple(p.shape)) for p in params]
    # gradients from large to below eps: the betas, eps and the decay all shape the steps
    grads = [[rng.normal(0, scale, tuple(p.shape)) for p in params] for scale in (1.0, 0.1, 0.001)]
    with torch.no_grad():
        for p, x in zip(params, start):
            p.copy_(torch.from_numpy(x))
    for step in grads:
        for p, g in zip(params, step):
            p.grad = torch.from_numpy(g).to(p.dtype)
        opt.step()
    for i, (p, x) in enumerate(zip(params, start)):
        expected = reference_adam(x, [step[i] for step in grads], 0.01, (0.5, 0.75), 0.05, 0.3)
        np.testing.assert_allclose(p.detach().double().numpy(), expected, rtol=0, atol=2e-6)


def test_another_optimizer_class_is_one_override_away(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=smoke", "model.optimizer._target_=torch.optim.AdamW",
                      "model.optimizer.lr=0.02")
    validate_config(cfg)
    built = configured_module(cfg)
    opt = built.configure_optimizers()
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert group["lr"] == 0.02 and tuple(group["betas"]) == (0.9, 0.99) and group["weight_decay"] == 5e-4
    assert "optimizer" not in built.hparams  # a factory is code: never a checkpoint's hyper-parameter
    # an optimizer without betas: the options it does not take are dropped on the command line
    sgd = ["experiment=smoke", "model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.5"]
    with pytest.raises(ValueError, match=r"model\.optimizer\.betas: torch\.optim\.SGD takes no 'betas'.*"
                                         r"~model\.optimizer\.betas"):
        validate_config(compose_cfg(tmp_path, *sgd))
    cfg = compose_cfg(tmp_path, *sgd, "~model.optimizer.betas")
    validate_config(cfg)
    opt = configured_module(cfg).configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ValueError, match=r"model\.optimizer\._target_: 'torch\.optim\.Adamm' is not an importable"):
        validate_config(compose_cfg(tmp_path, "experiment=smoke", "model.optimizer._target_=torch.optim.Adamm"))


def test_the_library_takes_an_optimizer_factory_or_plain_settings():
    factory = functools.partial(torch.optim.SGD, lr=0.3)
    opt = module(factory).configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == 0.3
    opt = module({"lr": 0.2}).configure_optimizers()
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.2
    assert module({"lr": 0.2}).hparams["optimizer"] == {"lr": 0.2}  # plain settings stay hyper-parameters
