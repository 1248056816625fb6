"""Typed configuration from defaults, YAML and ``--set KEY=VALUE`` flags, for every lmdir command.

A command's configuration is one frozen dataclass (nested dataclasses for groups of fields). This
module applies changes to it — a YAML mapping, keyword fields, dotted command-line strings — reading
strings as each field's declared type and refusing unknown names with the list of valid ones.
Fields typed as ``dict`` take mappings that are merged into what is there, so several sources can
each set a few entries.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn command-line strings into the field's type; anything else must already have it."""
    # tuple[str, ...] and dict[str, float] are checked as tuple and dict (their arguments are
    # element types, not alternatives); Optional/Union arguments are alternatives.
    args = typing.get_args(hint) if typing.get_origin(hint) not in (tuple, dict) else ()
    allowed = tuple(a for a in args if a is not type(None)) if args else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{where}: None is not allowed")
    if isinstance(value, str) and type(None) in args and value.strip().lower() in ("none", "null"):
        return None
    if isinstance(value, str) and str not in allowed:
        text = value.strip()
        kind = allowed[0]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes")
            return kind(text)
        except (ValueError, TypeError):
            raise ValueError(f"{where}: cannot read {value!r} as {kind.__name__}") from None
    if isinstance(value, bool) and bool not in allowed:
        raise ValueError(f"{where}: expected {' or '.join(a.__name__ for a in allowed)}, got a bool")
    if isinstance(value, int) and float in allowed and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and tuple in allowed:
        return tuple(value)
    if not isinstance(value, allowed):
        raise ValueError(f"{where}: expected {' or '.join(a.__name__ for a in allowed)}, "
                         f"got {type(value).__name__} {value!r}")
    return value


def _merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(
            merged.get(key), Mapping) else value
    return merged


def override_dataclass(settings: C, changes: Mapping[str, Any], where: str) -> C:
    """A copy of the frozen dataclass ``settings`` with ``changes`` applied.

    Nested dataclass fields take a mapping of their own fields; ``dict`` fields merge a mapping into
    their value; strings are read as the field's type. An unknown field raises ValueError naming
    ``where`` and the valid fields, and why a field is gone when the dataclass lists it in a
    ``RETIRED`` class attribute (field name → reason).
    """
    hints = typing.get_type_hints(type(settings))
    names = [f.name for f in dataclasses.fields(settings)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        retired = getattr(type(settings), "RETIRED", {})
        reasons = "".join(f"; {where}.{u}: {retired[u]}" for u in unknown if u in retired)
        raise ValueError(f"unknown setting(s) {', '.join(f'{where}.{u}' for u in unknown)}; "
                         f"{where} has: {', '.join(names)}{reasons}")
    typed = {}
    for name, value in changes.items():
        current, here = getattr(settings, name), f"{where}.{name}"
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ValueError(f"{here}: expected a mapping of its fields, got {value!r}")
            typed[name] = override_dataclass(current, value, here)
        elif isinstance(current, Mapping):
            if not isinstance(value, Mapping):
                raise ValueError(f"{here}: expected a mapping, got {value!r}")
            typed[name] = _merge(current, value)
        else:
            typed[name] = coerce(value, hints[name], here)
    return dataclasses.replace(settings, **typed)


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": v}`` → ``{"a": {"b": {"c": v}}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"setting {dotted!r} conflicts with a value given for {p!r}")
        node[leaf] = value
    return nested


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": "1", "c": "x"}``; raises ValueError on an item without '='."""
    sets = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        sets[key.strip()] = value
    return sets


def load(defaults: C, path: str | None = None, sets: Mapping[str, str] | None = None, **fields: Any) -> C:
    """``defaults``, then the YAML mapping at ``path``, then keyword ``fields``, then dotted ``sets``."""
    config = defaults
    if path:
        try:
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        except OSError as e:
            raise ValueError(f"{path}: cannot read the configuration file: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: a configuration file is a YAML mapping of {type(defaults).__name__} fields")
        config = override_dataclass(config, raw, path)
    if fields:
        config = override_dataclass(config, fields, "arguments")
    if sets:
        config = override_dataclass(config, nest(sets), "--set")
    return config
