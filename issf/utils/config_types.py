"""Type checks of config dataclasses: a value from the command line that does not fit its field
(``saliency=flase``, ``dropout=high``) is an error naming the config key and what is allowed,
instead of a truthy string silently switching a module on."""

from __future__ import annotations

import dataclasses
from typing import Any

_ALLOWED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def check_field_types(instance: Any, prefix: str) -> None:
    """Raise ``TypeError`` for the first field of the dataclass ``instance`` whose value does not fit
    its annotation (``bool``, ``int``, ``float``, ``str``; other annotations are not checked).
    ``prefix`` is the config path of the dataclass, e.g. ``model.network.``."""
    for f in dataclasses.fields(instance):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind not in _ALLOWED:
            continue
        value = getattr(instance, f.name)
        if not _fits(kind, value):
            raise TypeError(f"{prefix}{f.name}: expected {_ALLOWED[kind]}, got {value!r}")
