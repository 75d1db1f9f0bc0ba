"""The user's own code named in a config as `module:function` (a student, a records loader), imported on first use.

The module is looked for in the config file's directory first, then among the installed packages
(as Flower's `module:object` apps are). Only a party's own config names code: nothing another party
sends is ever imported.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsa_secure.errors import ConfigError

PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class EntryPoint:
    """`spec` = `module:function`, searched for in `search` (the directory of the config that names it) first."""

    spec: str
    search: Path

    def __str__(self) -> str:
        return self.spec

    def load(self, what: str) -> Callable[..., Any]:
        """The function, or a ConfigError naming the entry point, `what` it is for, and what went wrong."""
        module_name, _, attribute = self.spec.partition(":")
        where = str(self.search.resolve())
        if where not in sys.path:
            sys.path.insert(0, where)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise ConfigError(f"{what} {self.spec!r}: cannot import {error.name!r} (looked in {where} and the installed "
                              "packages)") from None
        except Exception as error:  # whatever the user's module raises while it is imported
            raise ConfigError(f"{what} {self.spec!r}: importing {module_name!r} failed: {type(error).__name__}: {error}") from None
        function = getattr(module, attribute, None)
        if not callable(function):
            raise ConfigError(f"{what} {self.spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                              f"function {attribute!r}")
        return function


def entry_point_or_path(value: str, base: Path) -> EntryPoint | Path:
    """A config value that names either code (`module:function`) or a file (relative to the config's directory)."""
    path = Path(value) if Path(value).is_absolute() else base / value
    return EntryPoint(value, base) if PATTERN.match(value) and not path.exists() else path
