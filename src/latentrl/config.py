"""Typed, documented configuration: dataclasses + YAML files + ``key=value`` command-line overrides.

Every option is a dataclass field declared with :func:`cfg_field`, which makes a help text mandatory and can
attach allowed ``choices`` and a numeric range. Values are coerced to the annotated type and validated when a
config is built (directly in Python or through :func:`load_config`); every problem is a :class:`ConfigError`
that names the key, the offending value, and what would have been accepted.

Precedence (lowest to highest): dataclass defaults < YAML file < overrides::

    cfg = load_config(GRPOConfig, "configs/hrpo.yaml", ["learning_rate=1e-4", "latent.top_k=5"])

Option names follow Hugging Face TRL (``GRPOConfig``) wherever the concept is the same.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from latentrl.data.formats import FORMAT_NAMES
from latentrl.rl.losses import KL_PENALTIES, LOSS_AGGREGATIONS, POLICY_LOSSES

__all__ = [
    "BaseConfig",
    "ConfigError",
    "MOVED_KEYS",
    "upgrade_saved_config",
    "GRPOConfig",
    "LatentConfig",
    "LATENT_OPERATORS",
    "LoraConfig",
    "cfg_field",
    "mount_section",
    "mountable",
    "config_from_dict",
    "config_help",
    "config_to_dict",
    "load_config",
    "save_config",
    "validate_config",
]

C = TypeVar("C")

_NULL_LITERALS = ("null", "Null", "NULL", "~", "None", "")


class ConfigError(ValueError):
    """A configuration problem: unknown key, bad value, missing file, malformed YAML, inconsistent options."""


# ----------------------------------------------------------------------------------------------------------------
# Field declaration
# ----------------------------------------------------------------------------------------------------------------


def cfg_field(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - the natural name for a field's help text
    *,
    choices: Sequence[Any] | Mapping[str, Any] | None = None,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A ``dataclasses.field`` carrying the help text and validation rules of one config option.

    ``help`` is mandatory. ``choices`` restricts the value (each element, for list fields); a mapping (a registry)
    is kept by reference, so names registered later are valid choices too. ``min``/``max`` bound
    numeric values (inclusive unless ``min_exclusive``/``max_exclusive``). A mutable ``default`` (list, dict,
    dataclass instance) is turned into a ``default_factory`` that returns a fresh copy. Leave both ``default`` and
    ``default_factory`` out for a required option.
    """
    if not isinstance(help, str) or not help.strip():
        raise TypeError("cfg_field() needs a non-empty help text")
    if default is not dataclasses.MISSING and default_factory is not dataclasses.MISSING:
        raise TypeError("cfg_field() takes either default or default_factory, not both")
    metadata = {
        "help": help.strip(),
        "choices": choices if isinstance(choices, Mapping) else tuple(choices) if choices is not None else None,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
    }
    if default is not dataclasses.MISSING and (
        isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default)
    ):
        frozen = copy.deepcopy(default)
        return dataclasses.field(default_factory=lambda: copy.deepcopy(frozen), metadata=metadata)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------------------------------------------
# Type introspection and coercion
# ----------------------------------------------------------------------------------------------------------------

_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False). Unions of several non-None types stay unions."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # type: ignore[return-value]
    return tp, False


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in typing.get_args(tp)) + "]"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is Any:
        return "Any"
    return getattr(tp, "__name__", str(tp))


def _bad(key: str, value: Any, expected: str, extra: str = "") -> ConfigError:
    msg = f"Invalid value for '{key}': {value!r}; expected {expected}"
    if extra:
        msg += f" ({extra})"
    return ConfigError(msg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise a ConfigError naming ``key``. Nested dataclasses come from dicts."""
    if tp is Any:
        return value
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise _bad(key, value, _type_name(tp), "this option cannot be null")
    if optional and isinstance(value, str) and value in ("None", "null") and inner is not str:
        return None
    tp = inner

    if _is_union(tp):  # a union of several concrete types: first one that fits wins
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise _bad(key, value, _type_name(tp))

    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        raise _bad(key, value, "one of " + ", ".join(repr(a) for a in allowed))

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return _build(tp, value, prefix=key + ".")
        raise _bad(key, value, f"a mapping of {tp.__name__} options")

    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        if isinstance(value, str):  # CLI convenience: "a,b" -> ["a", "b"]; "" -> []
            value = [v.strip() for v in value.split(",")] if value.strip() else []
        elif not isinstance(value, (list, tuple)):
            value = [value]
        out = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out

    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, _type_name(tp))
        args = typing.get_args(tp)
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, f"{key}.<key>"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _bad(key, value, "a boolean (true/false)")

    if tp is int:
        if isinstance(value, bool):
            raise _bad(key, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    value = float(value.strip())
                except ValueError:
                    raise _bad(key, value, "an integer") from None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _bad(key, value, "an integer")

    if tp is float:
        if isinstance(value, bool):
            raise _bad(key, value, "a number")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise _bad(key, value, "a number") from None
        else:
            raise _bad(key, value, "a number")
        if math.isnan(out):
            raise _bad(key, value, "a number", "NaN is not allowed")
        return out

    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(key, value, "a string", "quote it in YAML")

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _bad(key, value, _type_name(tp))
    return value


def _check_constraints(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_constraints(v, meta, f"{key}[{i}]")
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"Invalid value for '{key}': {value!r}; allowed choices: " + ", ".join(repr(c) for c in choices)
        )
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None or hi is not None) and isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = lo is not None and (value <= lo if meta.get("min_exclusive") else value < lo)
        too_high = hi is not None and (value >= hi if meta.get("max_exclusive") else value > hi)
        if too_low or too_high:
            raise ConfigError(f"Invalid value for '{key}': {value!r}; must be {_range_text(meta)}")


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    parts = []
    if lo is not None:
        parts.append(("> " if meta.get("min_exclusive") else ">= ") + repr(lo))
    if hi is not None:
        parts.append(("< " if meta.get("max_exclusive") else "<= ") + repr(hi))
    return " and ".join(parts)


def _coerce_field(value: Any, f: dataclasses.Field, tp: Any, key: str) -> Any:
    out = _coerce(value, tp, key)
    _check_constraints(out, f.metadata, key)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Building configs
# ----------------------------------------------------------------------------------------------------------------


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    out: list[str] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        tp, _ = _split_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.extend(_dotted_keys(tp, prefix + f.name + "."))
        else:
            out.append(prefix + f.name)
    return out


def _unknown_key_error(cls: type, key: str, prefix: str, root: type | None = None) -> ConfigError:
    names = [f.name for f in _init_fields(cls)]
    matches = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if root is not None:  # also suggest a dotted key in another section, e.g. top_k -> latent.top_k
        for dotted in _dotted_keys(root):
            leaf = dotted.rsplit(".", 1)[-1]
            if dotted != prefix + key and difflib.SequenceMatcher(None, key, leaf).ratio() >= 0.8:
                matches.append(dotted)
    suggestion = ""
    if matches:
        shown = []
        for m in matches:
            full = m if "." in m else prefix + m
            if full not in shown:
                shown.append(full)
        suggestion = " (did you mean " + " or ".join(f"'{m}'" for m in shown[:4]) + "?)"
    section = f" in section '{prefix[:-1]}'" if prefix else ""
    return ConfigError(
        f"Unknown config key '{prefix}{key}'{suggestion}. Valid keys for {cls.__name__}{section}: "
        + ", ".join(names)
    )


def _build(cls: type[C], data: typing.Mapping[str, Any], prefix: str = "", root: type | None = None) -> C:
    if not isinstance(data, typing.Mapping):
        raise ConfigError(
            f"Expected a mapping of {cls.__name__} options"
            + (f" for '{prefix[:-1]}'" if prefix else "")
            + f", got {type(data).__name__}: {data!r}"
        )
    root = root or cls
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    for key in data:
        if not isinstance(key, str) or key not in fields:
            raise _unknown_key_error(cls, str(key), prefix, root)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            tp, _ = _split_optional(hints[name])
            value = data[name]
            if dataclasses.is_dataclass(tp) and isinstance(tp, type) and isinstance(value, typing.Mapping):
                kwargs[name] = _build(tp, value, key + ".", root)
            else:
                kwargs[name] = _coerce_field(value, f, hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"Missing required config key '{key}' ({f.metadata.get('help', '')}); set it in the YAML file "
                f"or pass {key}=..."
            )
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix:
            raise ConfigError(f"in section '{prefix[:-1]}': {e}") from None
        raise


def validate_config(cfg: Any, _prefix: str = "") -> None:
    """Re-check every field of ``cfg`` (types, choices, ranges, nested sections) and its ``validate()`` hook.

    Runs automatically when a config is constructed; call it again after mutating a config by hand.
    Coerced values are written back (e.g. an int given for a float option becomes a float).
    """
    cls = type(cfg)
    hints = _hints(cls)
    for f in _init_fields(cls):
        key = _prefix + f.name
        value = getattr(cfg, f.name)
        tp, _ = _split_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and isinstance(value, tp):
            validate_config(value, key + ".")
            continue
        object.__setattr__(cfg, f.name, _coerce_field(value, f, hints[f.name], key))
    hook = getattr(cfg, "validate", None)
    if callable(hook):
        try:
            hook()
        except ConfigError as e:
            if _prefix:
                raise ConfigError(f"in section '{_prefix[:-1]}': {e}") from None
            raise


class BaseConfig:
    """Mixin for config dataclasses: coerces and validates every field on construction, then calls ``validate()``.

    Subclass it with ``@dataclasses.dataclass(kw_only=True)`` and declare fields with :func:`cfg_field`.
    Define ``validate(self)`` for cross-field rules; raise :class:`ConfigError` naming the fields.
    """

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def mountable(cls: type[C]) -> type[C]:
    """Class decorator (above ``@dataclass``): other modules may add sections to ``cls`` with :func:`mount_section`.

    A mounted section is a field like any other (YAML section, dotted overrides, help, ``to_dict``, equality,
    ``dataclasses.replace``), but it is declared by the module that owns it: a method's options live in its own
    package, and this module never imports the methods. The constructor accepts a mounted section as an instance
    or a mapping; a section left out gets its defaults."""
    generated_init, generated_eq, generated_repr = cls.__init__, cls.__eq__, cls.__repr__
    cls.MOUNTED_SECTIONS = {}

    def __init__(self: Any, **kwargs: Any) -> None:
        for name, section in type(self).MOUNTED_SECTIONS.items():
            value = kwargs.pop(name, None)
            if value is None:
                value = section()
            elif isinstance(value, Mapping):
                value = _build(section, value, name + ".")
            elif not isinstance(value, section):
                raise ConfigError(f"'{name}' must be a {section.__name__} or a mapping of its options, got "
                                  f"{type(value).__name__}")
            object.__setattr__(self, name, value)  # before the generated __init__ validates every field
        generated_init(self, **kwargs)

    def __eq__(self: Any, other: Any) -> Any:
        same = generated_eq(self, other)
        if same is not True:
            return same
        return all(getattr(self, n) == getattr(other, n) for n in type(self).MOUNTED_SECTIONS)

    def __repr__(self: Any) -> str:
        mounted = ", ".join(f"{n}={getattr(self, n)!r}" for n in type(self).MOUNTED_SECTIONS)
        return generated_repr(self)[:-1] + (", " + mounted if mounted else "") + ")"

    cls.__init__, cls.__eq__, cls.__repr__ = __init__, __eq__, __repr__
    return cls


def mount_section(owner: type, name: str, section: type, help: str) -> None:  # noqa: A002
    """Add config section ``name`` (a ``BaseConfig`` dataclass) to the :func:`mountable` config ``owner``.

    Called by the package that owns the options (``latentrl.methods.hrpo`` mounts ``hrpo`` on ``GRPOConfig``).
    Mounting the same class again under the same name is a no-op; a different class is an error."""
    mounted = getattr(owner, "MOUNTED_SECTIONS", None)
    if mounted is None:
        raise TypeError(f"{owner.__name__} does not take mounted sections (decorate it with @mountable)")
    if name in mounted:
        if mounted[name] is not section:
            raise ValueError(f"config section '{name}' is already mounted on {owner.__name__} by "
                             f"{mounted[name].__module__}.{mounted[name].__name__}")
        return
    if name in owner.__dataclass_fields__:
        raise ValueError(f"{owner.__name__} already has an option named '{name}'")
    if not (dataclasses.is_dataclass(section) and isinstance(section, type)):
        raise TypeError(f"a config section must be a config dataclass, got {section!r}")
    f = cfg_field(default_factory=section, help=help)
    f.name, f.type = name, section
    f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what @dataclass marks a regular field with
    owner.__dataclass_fields__[name] = f
    owner.__annotations__[name] = section
    mounted[name] = section
    _HINTS_CACHE.pop(owner, None)


def config_from_dict(cls: type[C], data: typing.Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> C:
    """Build ``cls`` from a (nested) dict, then apply ``key=value`` overrides, with full validation."""
    merged = copy.deepcopy(dict(data or {}))
    for ov in overrides:
        _apply_override(cls, merged, ov)
    preset = getattr(cls, "preset_defaults", None)
    if preset is not None:
        _fill_missing(merged, preset(merged))
    return _build(cls, merged)


def _fill_missing(data: dict[str, Any], defaults: typing.Mapping[str, Any]) -> None:
    """Set each dotted key of `defaults` in `data` unless the user already gave it (explicit values win)."""
    for dotted, value in defaults.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a malformed section: leave it for validation to report
                break
            node = child
        else:
            node.setdefault(leaf, copy.deepcopy(value))


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The configs that ship in the package (the repository's `configs/` links here)."""


def shipped_config(path: str | Path) -> Path:
    """`path`, or the shipped copy of a documented `configs/...` path when there is no such file here (a `pip
    install`ed package outside the repository: `--config configs/cpu/grpo.yaml` still finds its preset)."""
    p = Path(path)
    if not p.is_file() and p.parts[:1] == ("configs",) and (SHIPPED_CONFIGS.joinpath(*p.parts[1:])).is_file():
        return SHIPPED_CONFIGS.joinpath(*p.parts[1:])
    return p


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides (dotted keys for nested sections).

    Override values are parsed as YAML (``1e-4``, ``true``, ``[a, b]``, ``null``); for string options the raw
    text is used as is (so ``answer_delimiter=####`` works); list options also accept ``a,b,c``.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not a single string")
    data: dict[str, Any] = {}
    if path is not None:
        p = shipped_config(path)
        if not p.is_file():
            raise ConfigError(f"Config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e)
            ctx, ctx_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
            if ctx and ctx_mark is not None and (mark is None or ctx_mark.line != mark.line):
                problem += f" ({ctx} started at line {ctx_mark.line + 1})"
            raise ConfigError(f"Invalid YAML in {p}{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {p} must contain a mapping of options, got {type(loaded).__name__}")
        data = loaded
    try:
        return config_from_dict(cls, data, overrides)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{e} [config file: {path}]") from None
        raise


def override_key(override: str) -> str:
    """The dotted key a `key=value` override sets, normalised as it is applied (`--latent.top-k=5`: latent.top_k)."""
    return override.split("=", 1)[0].strip().lstrip("-").replace("-", "_")


def dotted_get(obj: Any, key: str) -> Any:
    """The value at a dotted key of a config (`latent.num_latent_steps`)."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _apply_override(cls: type, data: dict[str, Any], override: str) -> None:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(
            f"Override {override!r} is not of the form key=value (e.g. learning_rate=1e-5 or latent.top_k=10)"
        )
    raw = override.split("=", 1)[1]
    key = override_key(override)
    if not key:
        raise ConfigError(f"Override {override!r} has an empty key")
    parts = key.split(".")
    cur_cls, node, prefix = cls, data, ""
    for i, part in enumerate(parts):
        fields = {f.name: f for f in _init_fields(cur_cls)}
        if part not in fields:
            raise _unknown_key_error(cur_cls, part, prefix, cls)
        tp = _hints(cur_cls)[part]
        inner, _ = _split_optional(tp)
        last = i == len(parts) - 1
        if last:
            value = _parse_override_value(raw, tp)
            if isinstance(value, dict) and isinstance(node.get(part), dict):
                node[part] = _deep_merge(node[part], value)
            else:
                node[part] = value
            return
        if not (dataclasses.is_dataclass(inner) and isinstance(inner, type)):
            raise ConfigError(
                f"Invalid override key '{key}': '{prefix}{part}' is a {_type_name(tp)} option, not a section"
            )
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node, cur_cls, prefix = node[part], inner, prefix + part + "."


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_override_value(raw: str, tp: Any) -> Any:
    inner, optional = _split_optional(tp)
    s = raw.strip()
    if optional and s in _NULL_LITERALS:
        return None
    if inner is str:
        return raw
    origin = typing.get_origin(inner)
    if origin is list and typing.get_args(inner) and typing.get_args(inner)[0] is str and not s.startswith("["):
        return [v.strip() for v in s.split(",")] if s else []
    try:
        value = yaml.safe_load(s)
    except yaml.YAMLError:
        return s
    if value is None and s not in _NULL_LITERALS:  # e.g. text starting with '#', a YAML comment
        return s
    return value


# ----------------------------------------------------------------------------------------------------------------
# Serialisation and help
# ----------------------------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of the config (JSON/YAML-able)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict() expects a config dataclass instance, got {type(cfg).__name__}")
    out = dataclasses.asdict(cfg)
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (atomically); ``load_config(type(cfg), path)`` gives back an equal config."""
    from latentrl.checkpoint import atomic_write_text

    text = f"# latentrl {type(cfg).__name__}\n" + yaml.safe_dump(
        config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    path = Path(path)
    atomic_write_text(path, text)
    return path


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _help_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    nested: list[tuple[str, type]] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        tp = hints[f.name]
        inner, _ = _split_optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            nested.append((prefix + f.name, inner))
            continue
        default = _default_of(f)
        default_s = "(required)" if default is dataclasses.MISSING else yaml.safe_dump(
            default, default_flow_style=True, width=10_000
        ).strip().removesuffix("...").strip()
        help_s = f.metadata.get("help", "")
        if f.metadata.get("choices") is not None:
            help_s += " [choices: " + ", ".join(str(c) for c in f.metadata["choices"]) + "]"
        rng = _range_text(f.metadata)
        if rng:
            help_s += f" [range: {rng}]"
        rows.append((prefix + f.name, _type_name(tp), default_s, help_s))
    for name, sub in nested:
        rows.append((f"[{name}]", sub.__name__, "", (sub.__doc__ or "").strip().split("\n")[0]))
        rows.extend(_help_rows(sub, name + "."))
    return rows


def config_help(cls: type, width: int = 120) -> str:
    """A text table of every option of ``cls`` (nested sections as dotted keys): name, type, default, help."""
    rows = _help_rows(cls)
    head = ("option", "type", "default", "help")
    w_name = max(len(head[0]), *(len(r[0]) for r in rows))
    w_type = max(len(head[1]), *(len(r[1]) for r in rows))
    w_def = min(24, max(len(head[2]), *(len(r[2]) for r in rows)))
    w_help = max(30, width - w_name - w_type - w_def - 6)
    title = (cls.__doc__ or cls.__name__).strip().split("\n")[0]
    lines = [
        f"{cls.__name__}: {title}",
        "Set options in a YAML file and/or override them as key=value (nested: section.key=value).",
        "",
        f"{head[0]:<{w_name}}  {head[1]:<{w_type}}  {head[2]:<{w_def}}  {head[3]}",
        f"{'-' * w_name}  {'-' * w_type}  {'-' * w_def}  {'-' * min(w_help, 40)}",
    ]
    for name, tp, default, help_s in rows:
        if name.startswith("["):
            lines.append("")
            lines.append(f"{name} {tp}: {help_s}")
            continue
        wrapped = textwrap.wrap(help_s, w_help) or [""]
        if len(default) > w_def:
            lines.append(f"{name:<{w_name}}  {tp:<{w_type}}  {default}")
            lines.append(f"{'':<{w_name}}  {'':<{w_type}}  {'':<{w_def}}  {wrapped[0]}")
        else:
            lines.append(f"{name:<{w_name}}  {tp:<{w_type}}  {default:<{w_def}}  {wrapped[0]}")
        for cont in wrapped[1:]:
            lines.append(f"{'':<{w_name}}  {'':<{w_type}}  {'':<{w_def}}  {cont}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# The trainer configs
# ----------------------------------------------------------------------------------------------------------------

# "none" plus every registered thought operator: `latentrl.thoughts.register_thought_operator` adds each name
# when the operators are imported (importing `latentrl` does), so the config never imports the operator layer.
LATENT_OPERATORS: dict[str, str] = {"none": "no operator: plain token GRPO"}


def register_operator_name(name: str, defined_in: str) -> None:
    """Make `name` a valid `latent.operator`; `defined_in` names the operator class (for messages and docs)."""
    LATENT_OPERATORS[name] = defined_in


@dataclasses.dataclass(kw_only=True)
class LatentConfig(BaseConfig):
    """How latent steps are formed during rollouts (the ThoughtOperator and the latent span schedule)."""

    operator: str = cfg_field(
        "none",
        "Thought operator forming each latent input: none (plain token GRPO); hidden_state (last hidden state fed "
        "back, Coconut, Hao et al. 2024); soft_mixture (probability-weighted embedding mixture, soft thinking); "
        "hrpo_gate (gated token embedding + projected hidden state, HRPO, Yue et al. 2025); gumbel_topk (one-sided "
        "Gumbel top-K superposition, Latent-GRPO, Deng et al. 2026); gumbel_softmax (Gumbel-softmax embedding "
        "mixture, LEPO, Zhou et al. 2026); or any operator registered with register_thought_operator.",
        choices=LATENT_OPERATORS,
    )
    num_latent_steps: int | None = cfg_field(
        None,
        "Fixed number of latent steps at the start of the completion (Coconut / Özeren's LatR: 6; LEPO: 32 or 64). "
        "null: the latent span ends at end_of_thinking_token / answer_delimiter / max_latent_steps.",
        min=0,
    )
    max_latent_steps: int = cfg_field(
        64, "Upper bound on the number of latent steps per completion, whatever ends the latent span.", min=0
    )
    end_of_thinking_token: str | None = cfg_field(
        None,
        "Text whose first token ends latent mode when it is the unperturbed top-1 prediction (Latent-GRPO: "
        "'</think>'); decoding then continues with ordinary sampling.",
    )
    answer_delimiter: str | None = cfg_field(
        None,
        "Latent/hybrid mode lasts until this text's token ids appear in the completion (HRPO: '####'); detected "
        "on token ids, never by decoding text each step.",
    )
    after_latent_tokens: list[str] = cfg_field(
        [], "Tokens forced right after the latent span (e.g. Coconut's '<|end-latent|>')."
    )
    latent_temperature: float = cfg_field(
        1.0,
        "Temperature applied to the logits when forming a latent step (Latent-GRPO and LEPO use 1.0).",
        min=0.0,
        min_exclusive=True,
    )
    top_k: int = cfg_field(
        10, "K for the top-K operators: tokens kept per latent step (Latent-GRPO K=10; LEPO stores top-30).", min=1
    )
    top_p: float = cfg_field(
        0.95,
        "Nucleus mass kept before forming a latent step; at least top_k tokens are always kept (Latent-GRPO, LEPO: "
        "0.95).",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    gumbel_tau: float = cfg_field(
        1.0,
        "Softmax temperature over the perturbed scores (Latent-GRPO tau_g=1.0; LEPO Gumbel-softmax tau 0.3-0.5).",
        min=0.0,
        min_exclusive=True,
    )
    one_sided_noise: bool = cfg_field(
        True,
        "Shift the clamped Gumbel noise by -noise_clamp_min so it is never negative (Latent-GRPO's one-sided noise: "
        "a positive advantage then raises all K selected tokens).",
    )
    noise_clamp_min: float = cfg_field(-1.5, "Lower clamp of the Gumbel noise (Latent-GRPO: -1.5).")
    noise_clamp_max: float = cfg_field(3.0, "Upper clamp of the Gumbel noise (Latent-GRPO: 3.0).")
    eval_noise: bool = cfg_field(
        False,
        "Keep the stochastic noise of the latent operator at evaluation (Latent-GRPO evaluates Pass@1 without "
        "noise, Pass@k with noise on).",
    )
    noise_scale: float = cfg_field(
        1.0, "Multiplier of the (clamped, shifted) Gumbel noise of gumbel_topk (Latent-GRPO noise_scale: 1.0).", min=0.0
    )
    gumbel_logprob: str = cfg_field(
        "authors",
        "What gumbel_topk scores a latent step with in the policy loss. authors: the Latent-GRPO code's surrogate, the "
        "mean standard-Gumbel log-density of the K chosen entries' shifted, scaled noise (not a likelihood); "
        "likelihood: the exact log-likelihood of the stored top-K scores under the clamped, shifted, scaled noise "
        "(each chosen entry's noise density, plus for every other nucleus entry the log-probability that its score "
        "stayed below the K-th; an entry drawn at a clamp bound has no density and adds nothing). Ours, not a paper's: "
        "docs/methods/latent_grpo.md.",
        choices=("authors", "likelihood"),
    )

    def validate(self) -> None:
        if self.noise_clamp_min >= self.noise_clamp_max:
            raise ConfigError(
                f"noise_clamp_min ({self.noise_clamp_min}) must be smaller than noise_clamp_max ({self.noise_clamp_max})"
            )
        if self.num_latent_steps is not None and self.num_latent_steps > self.max_latent_steps:
            raise ConfigError(
                f"num_latent_steps ({self.num_latent_steps}) must be <= max_latent_steps ({self.max_latent_steps})"
            )
        if self.operator == "none" and self.num_latent_steps:
            raise ConfigError(
                f"num_latent_steps={self.num_latent_steps} needs a latent operator, but operator='none'; "
                f"choose one of {', '.join(op for op in LATENT_OPERATORS if op != 'none')}"
            )


REPORT_TO = ("jsonl", "tensorboard", "wandb", "none")
# Each method's preset values (dotted keys), filled by `latentrl.methods.register_method` when the methods are
# imported (importing `latentrl` does that): the config reads presets without importing the method layer.
METHOD_PRESETS: dict[str, typing.Mapping[str, Any]] = {}


def register_method_preset(name: str, defaults: typing.Mapping[str, Any]) -> None:
    """Record method `name`'s preset values for `GRPOConfig.preset_defaults`."""
    METHOD_PRESETS[name] = defaults


DEFAULT_MAX_STEPS = 100  # the run length when neither max_steps nor num_train_epochs is given
WANDB_MISSING = ("report_to includes wandb, but the wandb package is not installed: pip install wandb (and wandb "
                 "login), or choose other sinks (jsonl, tensorboard, none)")


def module_available(name: str) -> bool:
    """Whether `import name` can work, without importing it (a module already in `sys.modules` counts; None there
    means a blocked import)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _launcher_world_size() -> int:
    """Processes started by `accelerate launch` / torchrun (their WORLD_SIZE variable); 1 otherwise."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclasses.dataclass(kw_only=True)
class LoraConfig(BaseConfig):
    """LoRA adapters (peft) instead of full fine-tuning; the KL reference is the same model with the adapter off."""

    enabled: bool = cfg_field(
        False, "Train LoRA adapters (peft LoraConfig) instead of every weight; the base weights stay frozen and the "
        "KL reference is the policy with its adapter disabled (no second model copy in memory)."
    )
    r: int = cfg_field(16, "LoRA rank (HRPO: 32).", min=1)
    alpha: float = cfg_field(32.0, "LoRA scaling numerator lora_alpha: the update is (alpha / r) * B A (HRPO: 64).",
                             min=0.0, min_exclusive=True)
    dropout: float = cfg_field(
        0.0, "lora_dropout. The RL trainer sets every dropout probability to 0 (GRPO ratios assume the same function "
        "at rollout and update time), so this only matters for code that skips that.", min=0.0, max=1.0,
        max_exclusive=True,
    )
    target_modules: list[str] = cfg_field(
        ["all-linear"],
        "Module names (or name suffixes) that get adapters; [all-linear] = every linear layer except the LM head "
        "(peft's shortcut). E.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] for Qwen/Llama.",
    )
    modules_to_save: list[str] = cfg_field(
        [], "Base-model modules trained in full beside the adapters and saved with them (peft modules_to_save), e.g. "
        "[lm_head]. Method side modules (HRPO gate, value head, DLR assistant) are always trained in full and need "
        "no entry here."
    )
    train_latent_tokens: bool = cfg_field(
        True, "When the model has the Coconut latent tokens (<|start-latent|>, <|latent|>, <|end-latent|>), train "
        "their embedding rows beside the adapters (peft trainable_token_indices; a tied LM head shares them)."
    )

    def validate(self) -> None:
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (or be [all-linear])")
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise ConfigError(f"lora.target_modules={self.target_modules}: 'all-linear' cannot be combined with "
                              "module names")


#: options that moved into a method's section: old dotted key -> new dotted key (`upgrade_saved_config`)
MOVED_KEYS: dict[str, str] = {
    "gate_learning_rate": "hrpo.gate_learning_rate", "lambda_learning_rate": "hrpo.lambda_learning_rate",
    "latent.gate_c": "hrpo.gate_c", "latent.gate_r_min": "hrpo.gate_r_min", "latent.gate_r_max": "hrpo.gate_r_max",
    **{k: f"latent_grpo.{k}" for k in ("invalid_sample_masking", "exclude_invalid_from_stats", "first_token_selection",
                                        "first_token_zero_non_positive", "freeze_embeddings")},
}


def upgrade_saved_config(data: typing.Mapping[str, Any]) -> dict[str, Any]:
    """A run_config.json written by an earlier version, with every moved option at its new place (`MOVED_KEYS`),
    so old checkpoints still evaluate, inspect and resume. Hand-written YAML gets the did-you-mean error instead."""
    out = copy.deepcopy(dict(data))
    for old, new in MOVED_KEYS.items():
        *parents, leaf = old.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        section, key = new.split(".")
        out.setdefault(section, {}).setdefault(key, value)
    return out


@mountable
@dataclasses.dataclass(kw_only=True)
class GRPOConfig(BaseConfig):
    """Options of the latentrl RL trainer (GRPO family; TRL GRPOConfig names where the concept is the same)."""

    # --- model, data, run -------------------------------------------------------------------------------------
    model_name_or_path: str = cfg_field(
        help="Hugging Face model id or local directory in save_pretrained format (the policy's initialisation)."
    )
    output_dir: str = cfg_field(
        "runs/latentrl", "Directory for checkpoints, metrics.jsonl, TensorBoard logs, plots and results."
    )
    method: str = cfg_field(
        "grpo",
        "Method preset: grpo, coconut_grpo, latent_rl, hrpo (hrpo_no_gate, hrpo_raw_hidden: its ablations), "
        "latent_grpo, lepo, dlr, dlr_prefix (docs/methods/<name>.md).",
    )
    seed: int = cfg_field(0, "Random seed for python, numpy and torch (sampling, data order, initialisation).")
    resume_from_checkpoint: str | None = cfg_field(
        None,
        "Resume training from this checkpoint directory, or 'latest' for the newest complete checkpoint in "
        "output_dir (HF Trainer name).",
    )
    overwrite_output_dir: bool = cfg_field(
        False,
        "A new run (not resumed) into an output_dir that holds an earlier run is refused, so runs never mix; true "
        "replaces the earlier run instead, once the new one has completed its first step (HF Trainer name).",
    )
    dataset: str = cfg_field(
        "chain_sum", "Training data: a built-in task name, a local data file or folder, or a hub dataset id (see "
        "dataset_format for the row layouts read)."
    )
    eval_dataset: str | None = cfg_field(
        None, "Evaluation task name or file path. A benchmark suite task (chain_sum, icot_mult_4x4) gives its held-out "
        "problems, the ones `latentrl eval --data` and `latentrl bench` score. null: no evaluation during training."
    )
    dataset_config: str | None = cfg_field(
        None, "Configuration name of a hub dataset (`main` for openai/gsm8k); ignored for task names and files."
    )
    dataset_format: str = cfg_field(
        "auto",
        "Row layout of `dataset` and `eval_dataset` files/hub datasets: auto (recognised by their columns), "
        "canonical (question/answer[/steps]), gsm8k, math (problem/solution[/answer], MATH and MATH-500), "
        "dapo_math (chat `prompt` + `reward_model.ground_truth`), prompt (TRL's standard format: a `prompt` text or "
        "list of chat messages, any other columns passed to the reward functions; auto picks it for rows with "
        "`prompt` and no `question`). See latentrl.data.formats.",
        choices=FORMAT_NAMES,
    )
    num_train_examples: int = cfg_field(2000, "Number of training prompts to draw/load.", min=1)
    num_eval_examples: int = cfg_field(200, "Number of evaluation prompts.", min=0)
    exclude_init_train_data: bool = cfg_field(
        True,
        "When `dataset` is a built-in task: draw no training prompt the starting model records having trained on "
        "(`train_data` in its latent_init.json / results.json, written by `latentrl pretrain` and the init "
        "scripts), so that RL does not reward problems the init memorised (docs/bench/rl_prompts). No effect for "
        "files, hub datasets, or a model without such a record; false: the plain seeded draw.",
    )

    # --- optimisation (HF TrainingArguments names) --------------------------------------------------------------
    learning_rate: float = cfg_field(
        1e-5,
        "AdamW learning rate (TRL default 1e-6; HRPO 5e-6; Latent-GRPO and LEPO 1e-6).",
        min=0.0,
        min_exclusive=True,
    )
    weight_decay: float = cfg_field(0.0, "AdamW weight decay (HRPO: 0.1).", min=0.0)
    adam_beta1: float = cfg_field(0.9, "AdamW beta1.", min=0.0, max=1.0, max_exclusive=True)
    adam_beta2: float = cfg_field(0.999, "AdamW beta2.", min=0.0, max=1.0, max_exclusive=True)
    adam_epsilon: float = cfg_field(1e-8, "AdamW epsilon.", min=0.0, min_exclusive=True)
    max_grad_norm: float = cfg_field(
        1.0, "Gradient clipping by global norm (HRPO: 0.1); 0 disables clipping.", min=0.0
    )
    lr_scheduler_type: str = cfg_field(
        "constant",
        "Learning-rate schedule (HF names; HRPO: cosine).",
        choices=("constant", "linear", "cosine", "constant_with_warmup"),
    )
    warmup_ratio: float = cfg_field(
        0.0, "Fraction of the run's steps (max_steps, or num_train_epochs' steps) used for linear warmup (HRPO: 0.1).",
        min=0.0, max=1.0,
    )
    max_steps: int | None = cfg_field(
        None,
        "Optimizer steps (one rollout batch each). As in HF/TRL, max_steps > 0 wins over num_train_epochs; -1 or 0: "
        "num_train_epochs sets the length. null (not given): num_train_epochs when it is given, else "
        f"{DEFAULT_MAX_STEPS} steps.",
        min=-1,
    )
    num_train_epochs: float | None = cfg_field(
        None,
        "Passes over the training prompts, used unless max_steps > 0 (HF/TRL name): the run takes ceil(num_train_epochs * "
        "prompts / prompts per step) steps, where prompts per step = per_device_train_batch_size * "
        "gradient_accumulation_steps * processes / num_generations (dynamic_sampling refills draw extra prompts). "
        "null: not used.",
        min=0.0,
        min_exclusive=True,
    )
    per_device_train_batch_size: int = cfg_field(
        8,
        "Completions per micro-batch (TRL semantics: counts completions, not prompts). Each step generates "
        "per_device_train_batch_size * gradient_accumulation_steps completions = that / num_generations prompts.",
        min=1,
    )
    gradient_accumulation_steps: int = cfg_field(
        1, "Micro-batches accumulated per optimizer step; never changes the loss value (tested).", min=1
    )
    gradient_checkpointing: bool = cfg_field(
        False, "Recompute each decoder layer's activations in the backward pass instead of storing them (HF "
        "activation checkpointing, use_reentrant=False): less memory for about one extra forward per update; the "
        "loss and gradients are unchanged (tested)."
    )

    # --- generation ---------------------------------------------------------------------------------------------
    num_generations: int = cfg_field(
        8, "Completions sampled per prompt: the group size G (TRL default 8; HRPO 4 or 8).", min=2
    )
    max_prompt_length: int = cfg_field(256, "Prompts are left-truncated to this many tokens.", min=1)
    max_completion_length: int = cfg_field(
        64, "Maximum completion length in positions (latent and token positions both count).", min=1
    )
    temperature: float = cfg_field(
        1.0, "Sampling temperature for token positions (HRPO: 0.5; Özeren: 0.7).", min=0.0, min_exclusive=True
    )
    top_k: int | None = cfg_field(None, "Top-k filtering for token sampling; null or 0 disables it.", min=0)
    top_p: float = cfg_field(
        1.0, "Nucleus (top-p) filtering for token sampling; 1.0 disables it.", min=0.0, max=1.0, min_exclusive=True
    )
    loss_temperature: float | None = cfg_field(
        None,
        "Temperature of the log-probs in the loss; null: same as temperature (TRL). Explicit because HRPO's code "
        "samples at 0.5 but scores at 1.0.",
        min=0.0,
        min_exclusive=True,
    )

    # --- loss (TRL names) ---------------------------------------------------------------------------------------
    beta: float = cfg_field(
        0.0,
        "KL coefficient against the reference (initial) model; 0 skips the reference model (TRL default 0.0; "
        "HRPO 0.005; Latent-GRPO 0.001).",
        min=0.0,
    )
    kl_estimator: str = cfg_field(
        "k3",
        "KL estimator (Schulman's k1 = ref-lp difference, k2 = squared, k3 = exp(ref-lp)-(ref-lp)-1, TRL's choice).",
        choices=KL_PENALTIES,
    )
    epsilon: float = cfg_field(
        0.2, "PPO clip range epsilon (lower bound; TRL 0.2; Latent-GRPO 0.2; Özeren 0.1).", min=0.0
    )
    epsilon_high: float | None = cfg_field(
        None, "Upper clip range (clip-higher, DAPO: 0.28); null: same as epsilon (TRL).", min=0.0
    )
    dual_clip: float | None = cfg_field(
        None,
        "Dual-clip constant c for negative advantages: loss capped at -A*c (Ye et al. 2020; verl clip_ratio_c; "
        "Latent-GRPO 3.0); null disables it.",
        min=1.0,
        min_exclusive=True,
    )
    loss_type: str = cfg_field(
        "dapo",
        "Loss aggregation (TRL): grpo = per-sequence mean then batch mean; bnpo = token mean over the micro-batch; "
        "dr_grpo = sum / (batch * max_completion_length); dapo = sum / active tokens of the whole accumulated batch.",
        choices=LOSS_AGGREGATIONS,
    )
    policy_loss: str = cfg_field(
        "clipped",
        "Policy-gradient surrogate (rl.losses.POLICY_LOSSES): clipped (PPO ratio clipping, TRL); reinforce "
        "(A * exp(lp - lp.detach()), HRPO's on-policy loss); no_ratio (-A * lp, LEPO's latent-position loss).",
        choices=POLICY_LOSSES,
    )
    scale_rewards: str = cfg_field(
        "group",
        "Advantage scaling (TRL): group = divide by the group's reward std (+1e-4); batch = by the batch std; "
        "none = no scaling (Dr. GRPO).",
        choices=("group", "batch", "none"),
    )
    num_iterations: int = cfg_field(
        1, "Policy updates per rollout batch (TRL num_iterations, GRPO's mu).", min=1
    )
    mask_truncated_completions: bool = cfg_field(
        False,
        "Exclude completions that hit max_completion_length from the loss (TRL; DAPO overlong filtering; "
        "Latent-GRPO invalid-sample masking).",
    )
    dynamic_sampling: bool = cfg_field(
        False,
        "Drop groups whose rewards are all equal and refill the batch with new prompts (DAPO dynamic sampling; "
        "TRL lacks it). The logged reward, reward_std and frac_reward_zero_std describe the first round's batch; "
        "dynamic_sampling/kept_groups counts the informative groups trained on (0: a zero-advantage step).",
    )
    max_resample_rounds: int = cfg_field(
        4, "With dynamic_sampling: extra generation rounds tried before training on a partial batch.", min=0
    )

    advantage_epsilon: float | None = cfg_field(
        None, "Added to the reward std before dividing; null: method default (TRL 1e-4; latent_grpo 1e-6).", min=0.0
    )

    # --- rewards ------------------------------------------------------------------------------------------------
    reward_funcs: list[str] = cfg_field(
        ["correctness"],
        "Reward functions: registered names (correctness, format, hrpo, math_verify) or dotted import paths "
        "module.function importable from the working directory or PYTHONPATH (TRL's scripts), e.g. "
        "[my_rewards.length_reward, format]; the reward is their (weighted) sum. Signature of each (TRL): "
        "f(prompts, completions, **columns) -> list[float | None]; every dataset column but prompt arrives as a "
        "keyword argument.",
    )
    reward_weights: list[float] | None = cfg_field(
        None, "Weights of reward_funcs (same length); null: all 1.0 (TRL)."
    )

    # --- logging, evaluation, checkpoints -----------------------------------------------------------------------
    logging_steps: int = cfg_field(1, "Log metrics every this many optimizer steps.", min=1)
    log_to_console: bool = cfg_field(
        True, "Also print one line per logged step (step, reward, loss, kl, length, grad norm) to stderr, as HF's "
        "Trainer does, so batch jobs without a progress bar show progress; the benchmark turns it off."
    )
    eval_steps: int = cfg_field(0, "Evaluate every this many steps; 0 = only at the end of training.", min=0)
    save_steps: int = cfg_field(
        50, "Save a checkpoint every this many steps (and at the end); 0 = only at the end.", min=0
    )
    save_total_limit: int | None = cfg_field(
        2, "Keep at most this many checkpoints (the newest is never deleted); null keeps all (HF).", min=1
    )
    report_to: list[str] = cfg_field(
        ["jsonl", "tensorboard"],
        "Metric sinks: jsonl (output_dir/metrics.jsonl, read by latentrl plot), tensorboard (output_dir/tb), wandb "
        "(Weights & Biases, when the wandb package is installed; project from WANDB_PROJECT, default latentrl; run "
        "name = output_dir's name); [] or [none] logs nothing.",
        choices=REPORT_TO,
    )

    # --- precision and parallelism -----------------------------------------------------------------------------
    dtype: str = cfg_field(
        "float32",
        "dtype the model's weights are loaded in (TRL ModelConfig.dtype); 'auto' = the checkpoint's own dtype.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    mixed_precision: str | None = cfg_field(
        None,
        "Autocast for rollouts and the update (accelerate): no, bf16 (CPU and GPU) or fp16 (GPU, with a loss "
        "scaler); null = what `accelerate launch` configured, else no.",
        choices=("no", "bf16", "fp16"),
    )
    parallelism: str = cfg_field(
        "ddp",
        "How several processes (torchrun / accelerate launch) share the model. ddp: a full replica per process, "
        "gradients summed after the backward passes (every method, LoRA included). fsdp: FSDP2 "
        "(torch fully_shard) — parameters, gradients and optimizer state sharded per decoder layer, gathered for "
        "rollouts; same result as one process; on CPUs (gloo) too. Not with LoRA or DLR. An accelerate config "
        "with distributed_type FSDP selects fsdp as well. One process: ignored.",
        choices=("ddp", "fsdp"),
    )
    rollout_chunk_size: int | None = cfg_field(
        None,
        "Completions generated together in one batched rollout, each chunk with its own random stream seeded "
        "from (seed, step, chunk); chunks are spread over processes. Runs with the same global batch and the same "
        "value draw the same completions whatever the number of processes. null = "
        "per_device_train_batch_size * gradient_accumulation_steps (one chunk per process).",
        min=1,
    )

    # --- prompt format ------------------------------------------------------------------------------------------
    prompt_format: str = cfg_field(
        "raw",
        "raw: the dataset prompt text is fed as is (base / SFT models); chat: it becomes the user message of the "
        "tokenizer's chat template with the assistant turn opened (apply_chat_template, add_generation_prompt) — "
        "for instruct models. A method's own prompt suffix (Coconut's <|start-latent|>) follows the template.",
        choices=("raw", "chat"),
    )
    system_prompt: str | None = cfg_field(
        None, "With prompt_format=chat: a system message placed before the user message; null: none."
    )

    # --- parameter-efficient fine-tuning ------------------------------------------------------------------------
    lora: LoraConfig = cfg_field(
        default_factory=LoraConfig, help="LoRA adapters instead of full fine-tuning (see the lora.* options)."
    )

    # --- latent steps -------------------------------------------------------------------------------------------
    latent: LatentConfig = cfg_field(
        default_factory=LatentConfig, help="How latent steps are formed (see the latent.* options)."
    )
    # each method's own section (hrpo.*, dlr.*, ...) is mounted here by its method package: `mount_section`

    @classmethod
    def preset_defaults(cls, data: typing.Mapping[str, Any]) -> dict[str, Any]:
        """The chosen method's preset values (`Method.defaults`, dotted keys), applied by `config_from_dict` /
        `load_config` / the CLI to every key the YAML and overrides leave unset: `method: hrpo` alone gives
        HRPO's temperatures, loss and KL. Constructing `GRPOConfig(...)` directly uses the plain field defaults;
        use `GRPOConfig.for_method(name, **values)` for a method's presets from Python."""
        defaults = dict(METHOD_PRESETS.get(str(data.get("method", "grpo")), {}))
        if "reward_funcs" in data:  # the preset's weights belong to the preset's functions
            defaults.pop("reward_weights", None)
        return defaults

    @classmethod
    def for_method(cls, method: str, **values: Any) -> "GRPOConfig":
        """A config for `method` with its preset values, then `values` (nested sections as dicts: a section given as
        an instance, e.g. a LatentConfig, would replace the method's presets for it whole, so it is refused)."""
        preset = METHOD_PRESETS.get(method, {})
        whole = [k for k, v in values.items() if dataclasses.is_dataclass(v) and not isinstance(v, type)
                 and any(p == k or p.startswith(k + ".") for p in preset)]
        if whole:
            raise ConfigError(f"for_method({method!r}, ...): pass {', '.join(whole)} as a dict of the keys to set "
                              f"(e.g. {whole[0]}={{'operator': ...}}): an instance would replace {method}'s presets "
                              "for that section whole")
        return config_from_dict(cls, {"method": method, **values})

    @property
    def generation_batch_size(self) -> int:
        """Completions generated per optimizer step (TRL semantics, one process)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def validate(self) -> None:
        if METHOD_PRESETS and self.method not in METHOD_PRESETS:  # the registry registers every method's presets
            close = difflib.get_close_matches(self.method, list(METHOD_PRESETS), n=1)
            raise ConfigError(f"unknown method {self.method!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; allowed: {sorted(METHOD_PRESETS)}")
        world = _launcher_world_size()
        if self.generation_batch_size * world % self.num_generations != 0:
            procs = f" * {world} processes" if world > 1 else ""
            raise ConfigError(
                f"per_device_train_batch_size * gradient_accumulation_steps{procs} = {self.per_device_train_batch_size}"
                f" * {self.gradient_accumulation_steps}{f' * {world}' if world > 1 else ''} = "
                f"{self.generation_batch_size * world} completions per step must be divisible by num_generations "
                f"({self.num_generations})"
            )
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ConfigError(f"epsilon_high ({self.epsilon_high}) must be >= epsilon ({self.epsilon})")
        if not self.reward_funcs:
            raise ConfigError("reward_funcs must name at least one reward function")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"reward_weights has {len(self.reward_weights)} entries but reward_funcs has "
                f"{len(self.reward_funcs)} ({', '.join(self.reward_funcs)}); they must have the same length"
            )
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError(f"report_to={self.report_to}: 'none' cannot be combined with other sinks")
        if "wandb" in self.report_to and not module_available("wandb"):
            raise ConfigError(WANDB_MISSING)
        if self.max_steps is not None and self.max_steps <= 0 and self.num_train_epochs is None:
            raise ConfigError(f"max_steps={self.max_steps}: with max_steps <= 0 the length comes from num_train_epochs "
                              "(HF/TRL), which is not set; set max_steps > 0 or num_train_epochs")
        if self.latent.num_latent_steps is not None and self.latent.num_latent_steps > self.max_completion_length:
            raise ConfigError(
                f"latent.num_latent_steps ({self.latent.num_latent_steps}) must be <= max_completion_length "
                f"({self.max_completion_length})"
            )
        if self.system_prompt is not None and self.prompt_format != "chat":
            raise ConfigError("system_prompt is only used with prompt_format=chat; set prompt_format=chat or "
                              "remove system_prompt")
        if self.policy_loss in ("reinforce", "no_ratio") and self.num_iterations > 1:
            raise ConfigError(
                f"policy_loss={self.policy_loss!r} is on-policy (no ratio), so num_iterations must be 1, got "
                f"{self.num_iterations}"
            )
