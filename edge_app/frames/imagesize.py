"""An image's size read from its file's header, before anything decodes it (OpenCV has no header-only call).

A small file can hold a huge image: a 1 MB PNG of 20000x20000 zeros decodes to 1.2 GB a channel. The device
side decodes an image only once its header says it is at most :data:`MAX_PIXELS`. The reader knows what
OpenCV decodes under the extensions the sources take, by content (a .jpg that is a PNG is read as one): PNG,
JPEG, BMP, GIF, WebP, TIFF (and BigTIFF), PNM (PBM/PGM/PPM/PAM) and PFM. Anything else gives None.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

# Larger than any camera or phone photo (a 48 MP phone photo is 8000x6000); OpenCV's own limit is 2^30.
MAX_PIXELS = 50_000_000
_HEAD = 64 * 1024  # what the text headers (PNM) may take, comments and all
_STEPS = 4096  # segments or blocks before the size, at most: real files have a few


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header; None when it is none of the formats above, or malformed."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            for reader in (_png, _gif, _bmp, _webp, _tiff, _jpeg, _pnm):
                size = reader(f, head)
                if size is not None:
                    return size
    except (OSError, struct.error, ValueError, KeyError, IndexError):  # a truncated or malformed header
        pass
    return None


def over_limit(size: tuple[int, int], limit: int = MAX_PIXELS) -> str:
    """Why an image of ``size`` (width, height) is not to be decoded; "" when it may be."""
    w, h = size
    if w * h <= limit:
        return ""
    return f"{w}x{h} is {w * h / 1e6:.0f} megapixels, above the {limit / 1e6:.0f} megapixel limit of the device side: not decoded"


def _at(f: BinaryIO, pos: int, n: int) -> bytes:
    f.seek(pos)
    data = f.read(n)
    if len(data) != n:
        raise ValueError("truncated")
    return data


def _png(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _gif(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """The logical screen, or the first frame where it reaches beyond it (the decoder takes the larger)."""
    if head[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    w, h, flags = struct.unpack("<HHB", head[6:11])
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    for _ in range(_STEPS):
        kind = _at(f, pos, 1)[0]
        if kind == 0x2C:  # the first image descriptor: left, top, width, height
            left, top, fw, fh = struct.unpack("<HHHH", _at(f, pos + 1, 8))
            return max(w, left + fw), max(h, top + fh)
        if kind != 0x21:  # the trailer, or not a GIF after all
            return (w, h) if kind == 0x3B else None
        pos += 2  # an extension: its label, then sub-blocks up to an empty one
        while (n := _at(f, pos, 1)[0]) != 0:
            pos += n + 1
        pos += 1
    return None


def _bmp(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    if head[:2] != b"BM":
        return None
    if struct.unpack("<I", head[14:18])[0] == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", head[18:22])
    w, h = struct.unpack("<ii", head[18:26])
    return abs(w), abs(h)  # a negative height: rows stored top-down


def _webp(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: a 14-bit width and height after the key frame's start code
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: width-1 and height-1, 14 bits each, after the 0x2f signature
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas, width-1 and height-1 in 24 bits each
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _tiff(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first directory (the page imread decodes)."""
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None:
        return None
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 42:
        count_fmt, entry, value_at = "H", 12, 8
        ifd = struct.unpack(order + "I", head[4:8])[0]
    elif magic == 43:  # BigTIFF: 64-bit offsets and counts
        count_fmt, entry, value_at = "Q", 20, 12
        ifd = struct.unpack(order + "Q", head[8:16])[0]
    else:
        return None
    n_size = struct.calcsize(count_fmt)
    count = struct.unpack(order + count_fmt, _at(f, ifd, n_size))[0]
    table = _at(f, ifd + n_size, entry * min(count, 4096))
    found: dict[int, int] = {}
    for i in range(min(count, 4096)):
        e = table[i * entry : (i + 1) * entry]
        tag, kind = struct.unpack(order + "HH", e[:4])
        fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
        if tag in (256, 257) and fmt:
            found[tag] = struct.unpack(order + fmt, e[value_at : value_at + struct.calcsize(fmt)])[0]
    return (found[256], found[257]) if {256, 257} <= set(found) else None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """The first start-of-frame marker's size (segments before it, EXIF and its thumbnail too, are skipped)."""
    if head[:2] != b"\xff\xd8":
        return None
    pos = 2
    for _ in range(_STEPS):
        f.seek(pos)
        fill = f.read(64)  # a marker: 0xFF, fill bytes (more 0xFF), its code
        if fill[:1] != b"\xff" or not (code := fill.lstrip(b"\xff")):
            return None
        pos += len(fill) - len(code) - 1
        marker = code[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # the end, or the scan, before any frame
            return None
        length = struct.unpack(">H", _at(f, pos + 2, 2))[0]
        if marker in _SOF:
            h, w = struct.unpack(">HH", _at(f, pos + 5, 4))
            return w, h
        if length < 2:
            return None
        pos += 2 + length
    return None


def _pnm(f: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """P1-P6 (and PFM's PF/Pf): width and height are the first two numbers after the magic, comments
    (# to the end of the line) aside; P7 (PAM) names them WIDTH and HEIGHT."""
    if head[:1] != b"P" or head[1:2] not in b"1234567Ff" or head[2:3] not in b" \t\r\n":
        return None
    f.seek(0)
    lines = [line.split("#", 1)[0].split() for line in f.read(_HEAD).decode("latin-1")[2:].splitlines()]
    if head[1:2] == b"7":  # KEY VALUE lines up to ENDHDR
        named = {}
        for words in lines:
            if words[:1] == ["ENDHDR"]:
                break
            if len(words) >= 2:
                named[words[0]] = words[1]
        return int(named["WIDTH"]), int(named["HEIGHT"])
    words = [w for line in lines for w in line][:2]
    return int(words[0]), int(words[1])
