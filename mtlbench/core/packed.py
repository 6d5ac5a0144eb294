"""Columnar numeric arrays inside result files: the bulky per-sample series stored as one typed,
little-endian, base64-encoded block each, ``{"dtype": "float32", "shape": [94, 42], "base64": "…"}``.

A reader that does not need the values (aggregation, the tables) parses one JSON string
instead of thousands of numbers; the run page hands the block to the browser, which decodes it
(``DataView``, little-endian) and draws it. Values recorded at 6 significant digits round-trip
through float32 exactly (float32 holds 7.2): :func:`unpack` with ``digits=6`` returns the
recorded numbers. NaN is a value here (JSON's null). Torch-free; no numpy needed.
"""

from __future__ import annotations

import array
import base64
import binascii
import math
import sys
from typing import Any, Mapping, Sequence

# dtype -> (array typecode, bytes per value, the values it holds)
DTYPES: dict[str, tuple[str, int, str]] = {
    "float32": ("f", 4, "numbers (NaN allowed)"),
    "uint8": ("B", 1, "integers 0..255"),
    "uint16": ("H", 2, "integers 0..65535"),
}


class PackedError(ValueError):
    """A block whose dtype, shape or data do not agree; the message says how."""


def pack(rows: Sequence[Sequence[float]], dtype: str) -> dict[str, Any]:
    """``rows`` (a rectangular table, one row per sample) as a packed block of ``dtype``."""
    code, _, _ = _dtype(dtype)
    width = len(rows[0]) if rows else 0
    if any(len(r) != width for r in rows):
        raise PackedError(f"rows of different lengths ({sorted({len(r) for r in rows})}); a block is rectangular")
    flat = [v if v is not None else math.nan for r in rows for v in r]
    try:
        values = array.array(code, flat)
    except OverflowError:
        raise PackedError(f"a value does not fit {dtype} ({DTYPES[dtype][2]})") from None
    if sys.byteorder == "big":
        values.byteswap()
    return {"dtype": dtype, "shape": [len(rows), width], "base64": base64.b64encode(values.tobytes()).decode("ascii")}


def count_dtype(most: int) -> str:
    """The smallest unsigned dtype holding counts up to ``most``."""
    return "uint8" if most <= 0xFF else "uint16"


def unpack(block: Mapping[str, Any], digits: int | None = None) -> list[list[float]]:
    """The rows of a packed block (float32 values rounded to ``digits`` significant digits when
    given; NaN stays NaN)."""
    values = decode(block["dtype"], block["shape"], block["base64"])
    flat: list[Any] = values.tolist()
    if digits is not None and block["dtype"] == "float32":
        flat = [float(f"{v:.{digits}g}") if math.isfinite(v) else v for v in flat]
    rows, width = block["shape"][0], block["shape"][1] if len(block["shape"]) > 1 else 1
    return [flat[i * width : (i + 1) * width] for i in range(rows)]


def expected_chars(dtype: str, shape: Sequence[int]) -> int:
    """The length of the base64 text of a block of ``dtype`` and ``shape``."""
    n = math.prod(shape) * _dtype(dtype)[1]
    return 4 * ((n + 2) // 3)


def length_problem(dtype: str, shape: Sequence[int], text: str) -> str | None:
    """What is wrong with the base64 text's length for ``dtype`` and ``shape`` (cheap: nothing is decoded)."""
    want = expected_chars(dtype, shape)
    if len(text) != want:
        n = math.prod(shape)
        return (
            f"{len(text)} base64 characters, expected {want} "
            f"({' × '.join(map(str, shape))} = {n} {dtype} values of {_dtype(dtype)[1]} byte(s))"
        )
    return None


def decode(dtype: str, shape: Sequence[int], text: str) -> array.array:
    """The values of a block (flat, in row order); PackedError when the text is not base64 of
    exactly ``shape`` values of ``dtype``."""
    code, size, _ = _dtype(dtype)
    problem = length_problem(dtype, shape, text)
    if problem:
        raise PackedError(problem)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise PackedError("not valid base64 (characters outside A–Z, a–z, 0–9, +, / and = padding)") from None
    if len(raw) != math.prod(shape) * size:
        raise PackedError(f"{len(raw)} bytes after decoding, expected {math.prod(shape) * size}")
    values = array.array(code, raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _dtype(dtype: str) -> tuple[str, int, str]:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise PackedError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}") from None
