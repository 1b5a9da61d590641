"""Small builders shared by several test modules (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations


def png_header_only(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` (what an attacker uploads)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
