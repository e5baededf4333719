"""A dependency-free greyscale PNG writer (for `nngraph-datasets show`)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["image_grid", "write_png"]


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a 2-D array with values in `[0, 1]` as an 8-bit greyscale PNG."""
    a = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    h, w = a.shape
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def image_grid(rows: list[np.ndarray], scale: int = 4, pad: int = 1) -> np.ndarray:
    """Stack rows of images `[n, H, W]` into one picture, each pixel `scale` x `scale`."""
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:]
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad), 0.5)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = img
    return np.kron(out, np.ones((scale, scale)))
