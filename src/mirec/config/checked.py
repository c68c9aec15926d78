"""The checking machinery: a config section checks itself when it is built (from TOML, ``--set`` or code), every
``Literal`` field against its choices, then its ranges and cross-field rules."""

from __future__ import annotations

import dataclasses
import typing
from typing import ClassVar, Literal


class ConfigError(ValueError):
    pass


class CheckedConfig:
    """Checks a config section when it is built (from TOML, ``--set`` or in code): every ``Literal`` field
    against its choices, then the section's own ranges and cross-field rules in :meth:`check`."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            annotation = hints[f.name]
            if typing.get_origin(annotation) is Literal:
                value, choices = getattr(self, f.name), typing.get_args(annotation)
                if value not in choices:
                    raise ConfigError(f"{self.section}.{f.name} = {value!r}; expected one of {list(choices)}")
        self.check()

    def check(self) -> None:
        """Ranges and cross-field rules; raise :class:`ConfigError` via :meth:`require`."""

    def require(self, condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise ConfigError(f"{self.section}.{name} = {getattr(self, name)!r}; must be {rule}")
