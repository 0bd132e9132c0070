"""Hyper-parameters from the command line: ``key=value`` parsing and validation.

Values are parsed to bool, int, float, None or str, then checked against the method's
constructor, so ``--hp s=0.5`` for a method without ``s`` fails before any data is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from bayesagg import methods
from bayesagg.runner.config import ConfigError

__all__ = ["constructor_parameters", "parse_hparams", "parse_value", "validate_hparams"]

#: Arguments the runner itself passes; a user does not set them with --hp.
RUNNER_ARGUMENTS = frozenset({"num_tasks", "groups", "task"})
#: Arguments that take objects, not command-line values.
OBJECT_ARGUMENTS = frozenset({"generator"})


def parse_value(text: str) -> Any:
    """Return ``text`` as bool ("true"/"false"), None ("none"), int, float, or the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_hparams(items: Iterable[str], *, flag: str = "--hp") -> dict[str, Any]:
    """Return the ``key=value`` items as a dict (ConfigError naming a malformed item)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} is not of the form key=value (e.g. {flag} s=0.5)")
        out[key] = parse_value(value)
    return out


def constructor_parameters(method: str) -> tuple[dict[str, inspect.Parameter], bool]:
    """Return the method's constructor parameters and whether it takes ``**kwargs``."""
    try:
        cls = methods.method_class(method)
    except KeyError:
        raise ConfigError(
            f"unknown method {method!r}; known methods: {', '.join(methods.names())} "
            "(see `bayesagg list`)"
        ) from None
    except ImportError as err:
        raise ConfigError(
            f"method {method!r} is registered but cannot be imported here ({err}); "
            "install bayesagg-mtl[baselines] or pick another method"
        ) from None
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    forwarded = cls.hparams_forwarded_to
    if var_kw and forwarded is not None:
        # The adapter hands **hparams, after its own options and its bases', to another class
        # (BayesAgg-MTL's registry adapters to bayesagg.BayesAgg): check against all of them.
        bases = [
            c
            for c in cls.__mro__[1:]
            if issubclass(c, methods.Method) and c is not methods.Method and "__init__" in vars(c)
        ]
        for source in (*bases, forwarded):
            inner = dict(inspect.signature(source.__init__).parameters)
            inner.pop("self", None)
            params.update(inner)
        var_kw = False
    params = {
        k: p
        for k, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return params, var_kw


def validate_hparams(method: str, hparams: Mapping[str, Any]) -> None:
    """Raise ConfigError if a key is not an argument of the method's constructor."""
    params, var_kw = constructor_parameters(method)
    accepted = sorted(k for k in params if k not in RUNNER_ARGUMENTS | OBJECT_ARGUMENTS)
    for key in hparams:
        if key in OBJECT_ARGUMENTS:
            raise ConfigError(f"hyper-parameter {key!r} of method {method!r} is not set from text")
        if key in RUNNER_ARGUMENTS:
            raise ConfigError(
                f"hyper-parameter {key!r} of method {method!r} is set by the runner"
                + (" (use --task NAME)" if key == "task" else "")
            )
        if key not in params and not var_kw:
            raise ConfigError(
                f"method {method!r} has no hyper-parameter {key!r}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )
        if key in params:
            _check_kind(method, key, hparams[key], params[key])


def _annotated_kinds(param: inspect.Parameter) -> set[str]:
    """Return the type names of a parameter's annotation (``"float | None"``: float, None)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        default = param.default
        if isinstance(default, bool):
            return {"bool"}
        if isinstance(default, int | float):
            return {type(default).__name__}
        return set()
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return {part.strip() for part in str(text).split("|")}


def _check_kind(method: str, key: str, value: Any, param: inspect.Parameter) -> None:
    """Raise ConfigError where a number or a truth value is expected and the text is neither.

    Without it, ``--hp s_regression=abc`` reaches the constructor as the string "abc" and fails
    there with a comparison error that does not say which value was wrong.
    """
    kinds = _annotated_kinds(param)
    if not kinds or not kinds <= {"float", "int", "bool", "None"}:
        return  # strings, literals, objects: the constructor checks them
    if value is None and "None" in kinds:
        return
    if kinds & {"float", "int"} and not isinstance(value, bool | str | None):
        return
    if "bool" in kinds and isinstance(value, bool):
        return
    wanted = " or ".join(
        {"float": "a number", "int": "an integer", "bool": "true or false", "None": "none"}[k]
        for k in ("float", "int", "bool", "None")
        if k in kinds and not (k == "int" and "float" in kinds)
    )
    raise ConfigError(f"--hp {key}={value!r}: method {method!r} expects {wanted}")


def protocol_hparams(method: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Return the protocol's defaults that the method's constructor accepts."""
    params, var_kw = constructor_parameters(method)
    return {k: v for k, v in defaults.items() if var_kw or k in params}
