"""How a message names an option: as the command spells it (`--inputs`) while the command runs,
as the Python API does (`inputs=...`) otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_ON_THE_COMMAND_LINE: ContextVar[bool] = ContextVar("bnfold_command_line", default=False)

# API parameter -> the command's flag
FLAGS = {
    "providers": "--providers",
    "provider_options": "--provider-option",
    "input_shapes": "--input-shape",
    "inputs": "--inputs",
    "samples": "--samples",
    "rtol": "--rtol",
    "atol": "--atol",
    "save_outputs": "--save-outputs",
    "validate": "--no-validate",
    "inline_functions": "--keep-functions",
    "strict": "--strict",
}
# how the API sets what the flag does, where that is not `NAME=...`
_API = {"validate": "validate=False", "inline_functions": "inline_functions=False"}


def option(name: str) -> str:
    """`name` (an API parameter) as the surface in use spells it."""
    if _ON_THE_COMMAND_LINE.get():
        return FLAGS[name]
    return _API.get(name, f"{name}=...")


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within the block, messages name options as the command does."""
    token = _ON_THE_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_THE_COMMAND_LINE.reset(token)


def input_shape(name: str) -> str:
    """How to give input `name` a shape, as the surface in use spells it."""
    if _ON_THE_COMMAND_LINE.get():
        return f"--input-shape {name}:DxD..."
    return f"input_shapes={{{name!r}: (...)}}"


def printable(text: str) -> str:
    """Escape control characters (names in hostile models can hold newlines)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
