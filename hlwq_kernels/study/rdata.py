"""A small pure-Python reader for R data packages: the lazy-load database ``data/Rdata.rdx`` /
``Rdata.rdb`` of an installed R package and R's XDR serialization (format versions 2 and 3).

It reads what data packages hold: atomic vectors (logical, integer, double, character), lists and
their attributes (names, classes), so a character vector comes back as a list of ``str`` (``None``
for ``NA``). Closures, environments and other language objects are refused with a clear error.
No R installation is needed.

    db = RDataDB(read("data/Rdata.rdx"), read("data/Rdata.rdb"))
    db.names()                      # objects in the database
    db.get("prideprejudice").value  # ["PRIDE AND PREJUDICE", "", "By Jane Austen", ...]
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field

__all__ = ["RObject", "RDataError", "unserialize", "RDataDB"]

# SEXP type codes (R's serialize.c)
_NIL, _SYM, _LIST, _CHAR, _LGL, _INT, _REAL, _STR, _VEC, _EXPR, _RAW = 0, 1, 2, 9, 10, 13, 14, 16, 19, 20, 24
_ATTRLIST, _REF, _NILVALUE = 239, 255, 254
_NA_INT = -(2**31)
_LATIN1 = 1 << 2  # LATIN1 bit of a CHARSXP's encoding levels


class RDataError(ValueError):
    """The bytes are not an R serialization this reader understands."""


@dataclass
class RObject:
    """An R value: ``value`` is a Python list (vectors, lists) or ``str`` (symbols); ``attrs`` maps
    attribute names to values."""

    rtype: int
    value: object
    attrs: dict = field(default_factory=dict)


class _Stream:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError("truncated R serialization")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        return n if n != -1 else (self.int() << 32) + self.int()


def _pairlist(s: _Stream, flags: int) -> dict:
    """A pairlist (the form of attributes) as an ordered dict of tag -> value."""
    out = {}
    while True:
        if flags & (1 << 9):
            _item(s)  # attributes of the cell itself: nothing a data package needs
        tag = _item(s) if flags & (1 << 10) else None
        out[tag.value if isinstance(tag, RObject) else str(len(out))] = _item(s)
        flags = s.int()
        if flags & 0xFF == _NILVALUE:
            return out
        if flags & 0xFF not in (_LIST, _ATTRLIST):
            raise RDataError(f"pairlist continues with SEXP type {flags & 0xFF}")


def _item(s: _Stream):
    flags = s.int()
    t = flags & 0xFF
    if t == _NILVALUE:
        return None
    if t == _REF:
        index = flags >> 8 or s.int()
        return s.refs[index - 1]
    if t == _SYM:
        sym = RObject(_SYM, _item(s))
        s.refs.append(sym)
        return sym
    if t in (_LIST, _ATTRLIST):
        return RObject(_LIST, _pairlist(s, flags))
    if t == _CHAR:
        n = s.int()
        if n == -1:
            return None
        return s.take(n).decode("latin-1" if (flags >> 12) & _LATIN1 else "utf-8")
    if t in (_LGL, _INT):
        n = s.length()
        value = [None if v == _NA_INT else v for v in struct.unpack(f">{n}i", s.take(4 * n))]
    elif t == _REAL:
        n = s.length()
        value = list(struct.unpack(f">{n}d", s.take(8 * n)))
    elif t == _RAW:
        value = s.take(s.length())
    elif t in (_STR, _VEC, _EXPR):
        value = [_item(s) for _ in range(s.length())]
    else:
        raise RDataError(f"unsupported R object (SEXP type {t}) at byte {s.pos}: only data vectors and lists are read")
    attrs = _item(s).value if flags & (1 << 9) else {}
    return RObject(t, value, attrs)


def unserialize(data: bytes):
    """The object in an R XDR serialization (``saveRDS``/lazy-load payload, uncompressed)."""
    s = _Stream(data)
    if s.take(2) != b"X\n":
        raise RDataError("not an R XDR binary serialization (expected 'X\\n')")
    version = s.int()
    s.int(), s.int()  # writer and minimal reader R versions
    if version == 3:
        s.take(s.int())  # native encoding name
    elif version != 2:
        raise RDataError(f"R serialization version {version} is not supported")
    return _item(s)


def _decompress_rds(raw: bytes) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    if raw[:3] == b"BZh":
        return bz2.decompress(raw)
    if raw[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(raw)
    return raw


def _decompress_entry(blob: bytes, compression: int) -> bytes:
    """A lazy-load entry: 4-byte big-endian length, then the payload (zlib for compression 1;
    for 2 and 3 a type byte: 'z' zlib, '2' bzip2, 'Z' xz, '0' stored)."""
    n = struct.unpack(">I", blob[:4])[0]
    if compression == 1:
        out = zlib.decompress(blob[4:])
    else:
        kind, body = blob[4:5], blob[5:]
        out = {b"z": zlib.decompress, b"2": bz2.decompress, b"Z": lzma.decompress}.get(kind, bytes)(body)
    if len(out) != n:
        raise RDataError(f"lazy-load entry decompressed to {len(out)} bytes, header says {n}")
    return out


def _named(obj: RObject) -> dict:
    return dict(zip(obj.attrs["names"].value, obj.value))


class RDataDB:
    """An R lazy-load database from the bytes of its ``.rdx`` index and ``.rdb`` data file."""

    def __init__(self, rdx: bytes, rdb: bytes):
        if rdx[:2] in (b"X\n", b"\x1f\x8b") or rdx[:3] == b"BZh" or rdx[:6] == b"\xfd7zXZ\x00":
            index = _named(unserialize(_decompress_rds(rdx)))
        else:
            index = _named(unserialize(_decompress_entry(rdx, 1)))
        compressed = index.get("compressed")
        self.compression = int(compressed.value[0]) if compressed is not None else 1
        self.variables = {k: tuple(v.value) for k, v in _named(index["variables"]).items()}
        self.rdb = rdb

    def names(self) -> list[str]:
        """Names of the objects stored."""
        return list(self.variables)

    def get(self, name: str) -> RObject:
        """The object ``name``."""
        if name not in self.variables:
            raise KeyError(f"{name!r} is not in this R database (it has {', '.join(self.variables)})")
        offset, length = (int(v) for v in self.variables[name])
        blob = self.rdb[offset:offset + length]
        return unserialize(_decompress_entry(blob, self.compression) if self.compression else blob)
