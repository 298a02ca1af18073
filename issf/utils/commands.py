"""Command lines a user can paste back: Hydra overrides quoted for both the shell and Hydra."""

from __future__ import annotations

import os
import re
import shlex

_PLAIN = re.compile(r"[A-Za-z0-9_./:+@-]([A-Za-z0-9_./:+@ -]*[A-Za-z0-9_./:+@-])?")  # inner spaces are fine


def hydra_value(value: str) -> str:
    """``value`` as Hydra reads it back unchanged: as it is when plain ASCII path characters and
    inner spaces, else single-quoted with ``\\`` and ``'`` escaped (a non-ASCII character, a comma
    that would make a sweep, quotes, brackets, an outer space)."""
    if _PLAIN.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_arg(key: str, value: str) -> str:
    """One shell word ``key=value`` that Hydra parses back to ``value``."""
    return shlex.quote(f"{key}={hydra_value(value)}")


def run_command(overrides: list[str], *extra: str, env: tuple[str, ...] = ("ISSF_ROOT",)) -> str:
    """``[ISSF_ROOT=...] python run.py <overrides> <extra>``: ``overrides`` as Hydra received them
    (shell-quoted again), ``extra`` already quoted (:func:`override_arg`), and the environment
    variables ``env`` that are set, so that the command runs from the same place."""
    prefix = [f"{name}={shlex.quote(os.environ[name])}" for name in env if os.environ.get(name)]
    return " ".join([*prefix, "python run.py", *(shlex.quote(o) for o in overrides), *extra])
