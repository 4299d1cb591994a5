"""Databend's binary JSON (JSONB) turned into the JSON text a Databend server sends for a Variant.

The embedded engine hands Variant values to pyarrow in Databend's own binary encoding
(databendlabs/jsonb, ``src/core/databend``): a container header (kind in the top 3 bits, element
count below), one 4-byte JEntry per element (kind in bits 28-30, payload length below; an object
lists every key's JEntry, then every value's), then the payloads in the same order. A nested
container's payload is a whole container. Numbers carry a one-byte tag and big-endian bytes
(a decimal: an 8, 16 or 32-byte signed integer and a scale byte); headers and JEntries are
big-endian too. Anything else raises JsonbError. The rendering was compared with the engine's own
``::String`` cast of the same values.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

_ARRAY = 0x80000000
_OBJECT = 0x40000000
_SCALAR = 0x20000000
_HEADER_KIND = 0xE0000000
_HEADER_COUNT = 0x1FFFFFFF

_NULL = 0x00000000
_STRING = 0x10000000
_NUMBER = 0x20000000
_FALSE = 0x30000000
_TRUE = 0x40000000
_CONTAINER = 0x50000000
_ENTRY_KIND = 0x70000000
_ENTRY_LENGTH = 0x0FFFFFFF

_NUMBER_ZERO, _NUMBER_NAN, _NUMBER_INF, _NUMBER_NEG_INF = 0x00, 0x10, 0x20, 0x30
_NUMBER_INT, _NUMBER_UINT, _NUMBER_FLOAT, _NUMBER_DECIMAL = 0x40, 0x50, 0x60, 0x70
_INT_FORMATS = {1: ">b", 2: ">h", 4: ">i", 8: ">q"}
_UINT_FORMATS = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}


class JsonbError(ValueError):
    """The bytes are not JSONB this decoder knows."""


def jsonb_to_json(data: bytes) -> str:
    """The compact JSON text of one JSONB value, as Databend renders a Variant."""
    value = _container(data, 0, len(data))
    return _render(value)


class _Float(float):
    """A JSON number that was stored as a float (rendered Databend's way, not Python's)."""


class _Decimal(str):
    """A JSON number that was stored as a decimal, already rendered."""


def _container(data: bytes, start: int, end: int) -> Any:
    if end - start < 4:
        raise JsonbError("truncated JSONB header")
    (header,) = struct.unpack_from(">I", data, start)
    kind, count = header & _HEADER_KIND, header & _HEADER_COUNT
    if kind == _SCALAR:
        count = 1
    elif kind not in (_ARRAY, _OBJECT):
        raise JsonbError(f"unknown JSONB container kind {kind:#x}")
    entries_count = count * 2 if kind == _OBJECT else count
    offset = start + 4
    if offset + 4 * entries_count > end:
        raise JsonbError("truncated JSONB entries")
    entries = struct.unpack_from(f">{entries_count}I", data, offset)
    offset += 4 * entries_count
    values = []
    for entry in entries:
        length = entry & _ENTRY_LENGTH
        if offset + length > end:
            raise JsonbError("truncated JSONB payload")
        values.append(_scalar(data, entry & _ENTRY_KIND, offset, offset + length))
        offset += length
    if offset != end:
        raise JsonbError("trailing bytes after a JSONB container")
    if kind == _SCALAR:
        return values[0]
    if kind == _ARRAY:
        return values
    keys = values[:count]
    if not all(isinstance(k, str) for k in keys):
        raise JsonbError("JSONB object key is not a string")
    return dict(zip(keys, values[count:], strict=True))


def _scalar(data: bytes, kind: int, start: int, end: int) -> Any:
    if kind == _NULL:
        return None
    if kind == _TRUE:
        return True
    if kind == _FALSE:
        return False
    if kind == _STRING:
        try:
            return data[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise JsonbError("JSONB string is not UTF-8") from None
    if kind == _NUMBER:
        return _number(data[start:end])
    if kind == _CONTAINER:
        return _container(data, start, end)
    raise JsonbError(f"unknown JSONB entry kind {kind:#x}")


def _number(raw: bytes) -> int | float | _Decimal:
    if not raw:
        raise JsonbError("empty JSONB number")
    tag, body = raw[0], raw[1:]
    if tag == _NUMBER_ZERO and not body:
        return 0
    if tag in (_NUMBER_NAN, _NUMBER_INF, _NUMBER_NEG_INF) and not body:
        return _Float({_NUMBER_NAN: math.nan, _NUMBER_INF: math.inf}.get(tag, -math.inf))
    formats = {_NUMBER_INT: _INT_FORMATS, _NUMBER_UINT: _UINT_FORMATS}.get(tag)
    if formats is not None and len(body) in formats:
        return int(struct.unpack(formats[len(body)], body)[0])
    if tag == _NUMBER_FLOAT and len(body) == 8:
        return _Float(struct.unpack(">d", body)[0])
    if tag == _NUMBER_DECIMAL and len(body) in (9, 17, 33):
        return _decimal(int.from_bytes(body[:-1], "big", signed=True), body[-1])
    raise JsonbError(f"unknown JSONB number tag {tag:#x}")


def _render(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{_render(k)}:{_render(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, _Float):
        return _render_float(value)
    if isinstance(value, _Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _decimal(unscaled: int, scale: int) -> _Decimal:
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    sign = "-" if unscaled < 0 else ""
    if scale == 0:
        return _Decimal(sign + digits)
    return _Decimal(f"{sign}{digits[:-scale]}.{digits[-scale:]}")


def _render_float(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "null"  # what the engine's own cast shows for them
    # Python writes 1e-07 where Databend writes 1e-7; otherwise the two agree
    return re.sub(r"e([+-])0+(?=\d)", r"e\1", repr(value))
