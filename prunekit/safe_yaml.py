"""Reading YAML from users: ``SafeLoader`` only, and no anchors or aliases.

An alias is a reference, so a few lines of nested aliases (a "billion laughs") expand to 10**9
values the moment anything walks the result: validation, an error message, the config hash. The
loader below refuses the first anchor or alias while the document is being composed, before any
Python object is built, so such a file costs no more than its own size. A size cap keeps a huge file
from being read at all. Booleans are YAML 1.2's: only true / false (``yes``, ``no``, ``on`` and
``off`` stay strings, which the config then refuses where it wants a boolean).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a megabyte is a mistake (or an attack)


class AliasError(yaml.YAMLError):
    """The document has an anchor (``&x``) or an alias (``*x``)."""

    def __init__(self, what: str, line: int):
        super().__init__(f"{what} at line {line}")
        self.what, self.line = what, line


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`AliasError` at the first anchor or alias event."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise AliasError(f"alias *{event.anchor}", event.start_mark.line + 1)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise AliasError(f"anchor &{anchor}", event.start_mark.line + 1)
        return super().compose_node(parent, index)


BOOL = "tag:yaml.org,2002:bool"
NoAliasLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
NoAliasLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse(text: str) -> Any:
    """One YAML document from ``text`` (no tags that build objects, no anchors, no aliases)."""
    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """The file's text as UTF-8; raises ValueError (one line naming the file and the fix) otherwise."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(
            f"{path}: {size} bytes is too large for a config (at most {MAX_BYTES}): give a YAML config file"
        )
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a UTF-8 text file (byte 0x{data[err.start]:02x} at offset {err.start}): "
            "give a YAML config file, saved as UTF-8"
        ) from None
