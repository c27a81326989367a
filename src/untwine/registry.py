"""Look up a class by name in a registry and check the parameters given for it."""
from __future__ import annotations

import inspect
from typing import Mapping, TypeVar

from untwine.errors import ConfigError

T = TypeVar("T")


def lookup(kind: str, registry: Mapping[str, type[T]], name: str, params: Mapping) -> tuple[type[T], set[str]]:
    """The class registered as `name` and the parameter names its constructor accepts.

    Raises ConfigError naming the unknown name or parameters and the valid choices."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; expected one of {sorted(registry)}")
    cls = registry[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"{kind} {name!r} got unknown parameter(s) {unknown}; it accepts {sorted(accepted)}")
    return cls, accepted
