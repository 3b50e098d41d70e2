"""``TESSERA__<SECTION>__<KEY>`` overrides of ``feature_repo.yaml``, and the one-line errors
that name where a bad value came from: the file and its dotted key, or the variable.

Used by :func:`features.config.load_config`; the models themselves are in
:mod:`features.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from features.errors import ConfigError

ENV_PREFIX = "TESSERA__"

_Loc = tuple[str, ...]
_SECRET_KEYS = {("token",)}  # keys whose values an error must not quote


def _env_var(loc: _Loc, from_env: Mapping[_Loc, str], raw: Mapping[str, Any]) -> str | None:
    """The variable an error at ``loc`` comes from (None: it comes from the file).

    It does when the variable set ``loc`` or a key above it, or when the variable created the
    key ``loc`` (absent from the file) on the way down to its own key.
    """
    above = [keys for keys in from_env if loc[:len(keys)] == keys]
    if above:  # the deepest variable wins: it was applied after the ones above it
        return from_env[max(above, key=len)]
    for keys, name in from_env.items():
        if keys[:len(loc)] == loc and not _in_file(raw, loc):
            return name
    return None


def _in_file(raw: Mapping[str, Any], loc: _Loc) -> bool:
    node: Any = raw
    for key in loc:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def one_line(file: Path, err: Any, from_env: Mapping[_Loc, str] | None = None,
              raw: Mapping[str, Any] | None = None) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top)"
    kind = err["type"]
    var = _env_var(loc, from_env or {}, raw or {})
    if var is not None:
        where = f"environment variable {var}"
        if kind == "extra_forbidden":
            return (f"{where}: unknown key {key!r} (check the spelling: {ENV_PREFIX}<SECTION>__"
                    f"<KEY>; see docs/configuration.md)")
        where = f"{where}: {key}"
    else:
        where = f"{file}: {key}"
        if kind == "extra_forbidden":
            return f"{where}: unknown key (check the spelling; see docs/configuration.md)"
    if kind == "missing":
        return f"{where}: required key is missing"
    got = err.get("input")
    if loc[-1:] in _SECRET_KEYS:  # never echo a secret into a log or a terminal
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if repr(got) in msg else f"{where}: {msg} (got {got!r})"


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[_Loc, str]:
    """Overlay ``TESSERA__SECTION__KEY=value`` variables on the parsed file, in place.

    Values are parsed as YAML scalars so ``TESSERA__SERVICES__REDIS__PORT=7000`` is an int; a
    value that is not valid YAML (``@secret``) is kept as the string it is.

    Returns:
        Which variable set each dotted key, so an error names the variable, not the file.
    """
    import yaml

    from_env: dict[_Loc, str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                above = ".".join(parts[:depth + 1])
                raise ConfigError(f"environment variable {name}: {above!r} is not a section "
                                  f"(it is {child!r}), so it has no key {parts[depth + 1]!r}")
            else:
                child = node[part] = dict(child)
            node = child
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            parsed = value
        node[parts[-1]] = parsed
        from_env[tuple(parts)] = name
    return from_env
