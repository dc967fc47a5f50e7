"""The rules a config value is checked against, and the generic code that reads values into a config tree.

`Range` and the annotated aliases (`PositiveInt`, `Share`, ...) are the field types `tfflannel.config`'s
schema is written in; `apply_values` coerces each value read from YAML or `--set` to its field's type
(`coerce_value`) and checks it against the field's `Literal` choices or `Range` (`check_value`) as it is set;
`check_tree` re-checks a whole tree. Nothing here knows the schema itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import yaml

from tfflannel.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric config field, used as `Annotated[int, Range(1)]`.

    Args:
        low: float or None. Lower bound; None for none. Defaults to `None`.
        high: float or None. Upper bound; None for none. Defaults to `None`.
        low_open: bool. Exclude `low` itself. Defaults to `False`.
        high_open: bool. Exclude `high` itself. Defaults to `False`.
    """

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value):
        """Whether `value` lies in the interval.

        Args:
            value: int or float. The value to test.

        Returns:
            bool. True when `value` satisfies both bounds (open bounds exclude the bound itself).
        """
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self):
        """The rule in words, e.g. `>= 1` or `in (0, 0.5]`, for error messages.

        Returns:
            str. The interval in words; assumes at least one bound is set.
        """
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Share = Annotated[float, Range(0, 1, high_open=True)]            # a share of something, 1 excluded
Probability = Annotated[float, Range(0, 1)]
Momentum = Annotated[float, Range(0, 1, high_open=True)]


def coerce_value(value, default, where):
    """A YAML or `--set` value as the type of the field's default (bool, tuple, int, float, str).

    Args:
        value: the value read.
        default: the field's current value, whose type the result takes.
        where: str. Source and key, for the message.

    Raises:
        ConfigError: the value cannot be read as that type.
    """
    if isinstance(default, bool):
        if isinstance(value, str):
            lowered = value.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false. Received: {value!r}.")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list. Received: {value!r}.")
        return tuple(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value)
            if not isinstance(default, float):
                if number != int(number):
                    raise ValueError(value)
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            kind = "a number" if isinstance(default, float) else "a whole number"
            raise ConfigError(f"{where}: expected {kind}. Received: {value!r}.") from None
        return number
    if default is None or isinstance(default, str):
        return None if value is None else str(value)
    return value


@functools.cache
def field_types(cls):
    """{field name: annotation with its Annotated/Literal extras} of a config dataclass."""
    return typing.get_type_hints(cls, include_extras=True)


def check_value(annotation, value, where):
    """Raise ConfigError when `value` breaks the Literal choices or Range of `annotation`."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        check_value(base, value, where)
        for rule in extras:
            if isinstance(rule, Range) and not rule.contains(value):
                raise ConfigError(f"{where} must be {rule.describe()}. Received: {value!r}.")
    elif origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where} must be one of {list(choices)}. Received: {value!r}.{hint}")
    elif origin is tuple and isinstance(value, tuple):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            for index, item in enumerate(value):
                check_value(args[0], item, f"{where}[{index}]")


def apply_values(section, values, source, removed_keys, prefix=""):
    """Set a nested mapping of values on a config dataclass tree, each coerced and checked as it is set.

    Args:
        section: a config dataclass (the tree or one of its sections), changed in place.
        values: dict. Keys of `section`, mappings for nested sections.
        source: str. Where the values came from (a file, `--set`), for the message.
        removed_keys: dict. {dotted key: reason} of settings that existed once.
        prefix: str. Dotted path of `section`. Defaults to `""`.

    Raises:
        ConfigError: an unknown or removed key (with a did-you-mean hint), a value of the wrong type or
            breaking its rule.
    """
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            if dotted in removed_keys:
                raise ConfigError(f"{source}: '{dotted}' was removed in 0.3: {removed_keys[dotted]}.")
            close = difflib.get_close_matches(key, names, n=1)
            if close:
                hint = f"did you mean '{prefix}{close[0]}'?"
            else:
                hint = f"valid keys: {sorted(prefix + n for n in names)}"
            raise ConfigError(f"{source}: unknown key '{dotted}'; {hint}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping. Received: {value!r}.")
            apply_values(current, value, source, removed_keys, f"{dotted}.")
        else:
            value = coerce_value(value, current, f"{source}: '{dotted}'")
            check_value(field_types(type(section))[key], value, f"{source}: '{dotted}'")
            setattr(section, key, value)


def check_tree(section, source, prefix=""):
    """Check every leaf field of a config dataclass tree against its annotation (`check_value`).

    Args:
        section: a config dataclass.
        source: str. Where the values came from, for the message.
        prefix: str. Dotted path of `section`. Defaults to `""`.

    Raises:
        ConfigError: a value outside its range or choices; the message names the key.
    """
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            check_tree(value, source, f"{prefix}{item.name}.")
        else:
            check_value(field_types(type(section))[item.name], value, f"{source}: '{prefix}{item.name}'")


def read_yaml(text, where):
    """yaml.safe_load with syntax errors (and python/* tags) reported as ConfigError with file and line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}{position}: invalid YAML: {problem}") from None
