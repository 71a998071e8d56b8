"""Path-aware access to one mapping of the config file: `Section`, and the size/duration/`${VAR}` rules.

A `Section` knows the file and the key path it came from, so any mistake is reported as
`FILE: outputs[1].batch.max_bytes: expected a size like "5MiB", got "lots"`; `done()` rejects keys nobody read.
The typed getters remember what they returned (`resolved`), which is what `logagent check` prints.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeAlias, TypeVar, cast, overload


class ConfigError(Exception):
    """A configuration mistake; the message names the file and the key path."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")
_SIZE_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_size(value: Any) -> int:
    """'5MiB' -> 5242880, '10MB' -> 10000000, 4096 -> 4096. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError
    number, unit, binary = m.groups()
    base = 1024 if (binary or unit == "") else 1000
    return int(float(number) * base ** _SIZE_UNITS[unit.lower()])


def parse_duration(value: Any) -> float:
    """'1.5s', '250ms', '1m30s', 5 (seconds) -> seconds as float. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            raise ValueError
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError
    return total


def expand_env(text: str) -> str:
    """`${VAR}` and `${VAR:-default}` in config values; an unset variable without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_RE.sub(sub, text)


_MISSING = object()


# Section has methods named str, int, float and bool (the typed getters); annotations inside it use these.
_Str: TypeAlias = str
_Int: TypeAlias = int
_Float: TypeAlias = float
_Bool: TypeAlias = bool
_StrList: TypeAlias = list[str]
_StrMap: TypeAlias = dict[str, str]
_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _resolves(getter: Callable[_P, _R]) -> Callable[_P, _R]:
    """Remember what a getter returned for its key (see `Section.resolved`). Getters take (self, key, ...)."""

    @functools.wraps(getter)
    def recorded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        value = getter(*args, **kwargs)
        section = cast(Section, args[0])
        key = cast(str, args[1] if len(args) > 1 else kwargs["key"])
        section.resolved[key] = value
        return value

    return recorded


class Section:
    """A mapping from the config file with the key path it sits at."""

    def __init__(self, data: Any, path: _Str, file: _Str) -> None:
        self.file = file
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(f"expected a mapping, got {_describe(data)}", here=True)
        self.data: dict[str, Any] = data
        self._used: set[str] = set()
        # key -> the value a getter returned (defaults and ${VAR} expansion included; nested Sections as such):
        # what `logagent check` prints. Keys read by `secret()` are listed in `secrets`.
        self.resolved: dict[str, Any] = {}
        self.secrets: set[str] = set()

    # -- errors ---------------------------------------------------------------------------------------------
    def key_path(self, key: _Str | _Int | None = None) -> _Str:
        if key is None:
            return self.path or "<top>"
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def error(self, message: _Str, key: _Str | _Int | None = None, here: _Bool = False) -> ConfigError:
        where = self.key_path(None if here else key)
        return ConfigError(f"{self.file}: {where}: {message}")

    # -- access ---------------------------------------------------------------------------------------------
    def has(self, key: _Str) -> _Bool:
        return key in self.data

    def raw(self, key: _Str, default: Any = _MISSING) -> Any:
        self._used.add(key)
        if key in self.data and self.data[key] is not None:
            value = self.data[key]
            if isinstance(value, str):
                try:
                    value = expand_env(value)
                except KeyError as e:
                    raise self.error(f"environment variable {e.args[0]} is not set", key) from None
            self.resolved[key] = value
            return value
        if default is _MISSING:
            typo = self._typo_of(key)
            if typo is not None:
                raise self.error(f"unknown key (did you mean {key}?)", typo)
            raise self.error("is required", key)
        self.resolved[key] = default
        return default

    def _typo_of(self, key: _Str) -> _Str | None:
        """An unknown key present in place of a required one (`path:` for `paths:`): that is what to report."""
        unread = [k for k in self.data if isinstance(k, str) and k not in self._used]
        import difflib  # only for a config error's "did you mean"

        close = difflib.get_close_matches(key, unread, n=1, cutoff=0.75)
        return close[0] if close else None

    @overload
    def str(self, key: _Str, default: _Str = ..., choices: tuple[_Str, ...] | None = None) -> _Str: ...
    @overload
    def str(self, key: _Str, default: _T, choices: tuple[_Str, ...] | None = None) -> _Str | _T: ...
    @_resolves
    def str(self, key: _Str, default: Any = _MISSING, choices: tuple[_Str, ...] | None = None) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_describe(value)}", key)
        if choices is not None and value not in choices:
            raise self.error(f"expected one of {', '.join(choices)}, got {value!r}", key)
        return value

    @overload
    def int(self, key: _Str, default: _Int = ..., min: _Int | None = None, max: _Int | None = None) -> _Int: ...
    @overload
    def int(self, key: _Str, default: _T, min: _Int | None = None, max: _Int | None = None) -> _Int | _T: ...
    @_resolves
    def int(self, key: _Str, default: Any = _MISSING, min: _Int | None = None, max: _Int | None = None) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise self.error(f"expected an integer, got {_describe(value)}", key)
        if min is not None and value < min:
            raise self.error(f"must be at least {min}, got {value}", key)
        if max is not None and value > max:
            raise self.error(f"must be at most {max}, got {value}", key)
        return value

    @overload
    def float(self, key: _Str, default: _Float = ..., min: _Float | None = None) -> _Float: ...
    @overload
    def float(self, key: _Str, default: _T, min: _Float | None = None) -> _Float | _T: ...
    @_resolves
    def float(self, key: _Str, default: Any = _MISSING, min: _Float | None = None) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        try:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        except (TypeError, ValueError):
            raise self.error(f"expected a number, got {_describe(value)}", key) from None
        if min is not None and value < min:
            raise self.error(f"must be at least {min}, got {value}", key)
        return value

    @_resolves
    def bool(self, key: _Str, default: _Bool | object = _MISSING) -> _Bool:
        value = self.raw(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise self.error(f"expected true or false, got {_describe(value)}", key)

    @overload
    def size(self, key: _Str, default: _Int | _Str = ...) -> _Int: ...
    @overload
    def size(self, key: _Str, default: _T) -> _Int | _T: ...
    @_resolves
    def size(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING and not isinstance(default, str):
            return value
        try:
            return parse_size(value)
        except ValueError:
            raise self.error(f'expected a size like "5MiB", got {_describe(value)}', key) from None

    @overload
    def duration(self, key: _Str, default: _Float | _Str = ...) -> _Float: ...
    @overload
    def duration(self, key: _Str, default: _T) -> _Float | _T: ...
    @_resolves
    def duration(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING and not isinstance(default, str):
            return value
        try:
            return parse_duration(value)
        except ValueError:
            raise self.error(f'expected a duration like "5s" or "250ms", got {_describe(value)}', key) from None

    @overload
    def str_list(self, key: _Str, default: _StrList = ...) -> _StrList: ...
    @overload
    def str_list(self, key: _Str, default: _T) -> _StrList | _T: ...
    @_resolves
    def str_list(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            raise self.error(f"expected a string or a list of strings, got {_describe(value)}", key)
        out = []
        for v in value:
            try:
                out.append(expand_env(str(v)))
            except KeyError as e:
                raise self.error(f"environment variable {e.args[0]} is not set", key) from None
        return out

    @overload
    def str_map(self, key: _Str, default: _StrMap = ...) -> _StrMap: ...
    @overload
    def str_map(self, key: _Str, default: _T) -> _StrMap | _T: ...
    @_resolves
    def str_map(self, key: _Str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, dict):
            raise self.error(f"expected a mapping, got {_describe(value)}", key)
        return {str(k): "" if v is None else str(v) for k, v in value.items()}

    @_resolves
    def section(self, key: _Str, required: _Bool = False) -> Section:
        value = self.raw(key, _MISSING if required else None)
        return Section(value, self.key_path(key), self.file)

    @_resolves
    def sections(self, key: _Str) -> list[Section]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            raise self.error(f"expected a list, got {_describe(value)}", key)
        return [Section(item, f"{self.key_path(key)}[{i}]", self.file) for i, item in enumerate(value)]

    @overload
    def secret(self, key: _Str, default: _Str = ...) -> _Str: ...
    @overload
    def secret(self, key: _Str, default: _T) -> _Str | _T: ...
    def secret(self, key: _Str, default: Any = _MISSING) -> Any:
        """A secret given inline, as `{env: NAME}` or as `{file: PATH}` (re-read by the caller if it rotates)."""
        value = self.raw(key, default)
        self.secrets.add(key)  # `{env: NAME}` / `{file: PATH}` stay as written (they name, not hold, the secret)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, dict):
            sub = Section(value, self.key_path(key), self.file)
            if sub.has("env"):
                name = sub.str("env")
                if name not in os.environ:
                    raise sub.error(f"environment variable {name} is not set", "env")
                sub.done()
                return os.environ[name]
            if sub.has("file"):
                path = sub.str("file")
                try:
                    text = Path(path).read_text().strip()
                except OSError as e:
                    raise sub.error(f"cannot read secret file {path}: {e.strerror}", "file") from None
                sub.done()
                return text
            raise self.error("expected a string, {env: NAME} or {file: PATH}", key)
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {_describe(value)}", key)
        return value

    def done(self) -> None:
        """Reject keys nobody asked for: a typo must not be silently ignored."""
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            known = ", ".join(sorted(self._used)) or "none"
            raise self.error(f"unknown key (known keys here: {known})", unknown[0])

    def __iter__(self) -> Iterator[_Str]:
        return iter(self.data)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value else "an empty string"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------------------------
# Whole-file config
