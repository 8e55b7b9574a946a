"""Where a JSON value ends in text that may still be growing, without parsing it into objects."""

from __future__ import annotations

_OPEN = {"{": "}", "[": "]"}
_SCALAR_END = frozenset(",}] \t\r\n")


def skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def value_end(text: str, start: int) -> int | None:
    """The index just past the JSON value that begins at `start`, or None while it is incomplete.

    Objects and arrays end at their matching bracket (brackets inside strings do not count), strings at
    their closing quote; numbers and literals end at a delimiter, so at the very end of `text` they are
    still incomplete (more digits may follow).
    """
    if start >= len(text):
        return None
    first = text[start]
    if first == '"':
        return _string_end(text, start)
    if first not in _OPEN:
        position = start
        while position < len(text) and text[position] not in _SCALAR_END:
            position += 1
        return position if position < len(text) else None
    stack = [_OPEN[first]]
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == '"':
            end = _string_end(text, position)
            if end is None:
                return None
            position = end
            continue
        if char in _OPEN:
            stack.append(_OPEN[char])
        elif char in "}]":
            if char != stack.pop():
                return position + 1  # mismatched: ends here as invalid JSON, for the parser to refuse
            if not stack:
                return position + 1
        position += 1
    return None


def _string_end(text: str, start: int) -> int | None:
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
            continue
        if char == '"':
            return position + 1
        position += 1
    return None
