"""Structured-config schemas: the library's config dataclasses registered with Hydra, so that a
YAML file fills a typed node whose defaults are the library's own (one source of defaults) and a
mistyped value on the command line is refused by Hydra, naming the key."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from issf.model.config import NetworkSettings


def register_schemas() -> None:
    """``model/network: schema`` (``conf/model/issf.yaml``'s defaults list) = :class:`NetworkSettings`."""
    ConfigStore.instance().store(group="model/network", name="schema", node=NetworkSettings)
