"""A corpus of bad image files, generated: every way a file in a dataset folder can fail to be an image.

`write_corpus(folder)` writes the good files and the bad ones and returns {file name: what the
error about it must say}. Nothing here is a stored binary: each file is made from a few bytes or a
picture drawn by PIL, so the corpus can grow without growing the repository.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def picture(width: int = 24, height: int = 16, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A valid 1-bit black PNG of side x side pixels: a few kilobytes that decode to side**2 pixels."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


# name -> (bytes, what the error must say besides the file's name)
def bad_files() -> dict[str, tuple[bytes, str]]:
    jpeg, png = encoded(picture(), "JPEG", quality=90), encoded(picture(), "PNG")
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "header-only.png": (png[:33], ""),
        "empty.jpg": (b"", "cannot identify"),
        "empty.png": (b"", "cannot identify"),
        "text.jpg": (b"this is a text file, not a JPEG\n" * 4, "cannot identify"),
        "html.png": (b"<!doctype html><html><body>404 Not Found</body></html>", "cannot identify"),
        "pdf.jpeg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "cannot identify"),
        "garbage.bmp": (bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8)), ""),
        "jpeg-named.png": (jpeg[:300], ""),  # a truncated JPEG under another suffix: the content decides
        "bomb.png": (png_bomb(10_000), "89,478,485 pixels"),
    }


def write_corpus(folder: Path) -> dict[str, str]:
    """Write the bad files, two symbolic links that lead nowhere and an unreadable file into `folder`;
    returns {name: what the error must say}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, says) in bad_files().items():
        (folder / name).write_bytes(data)
        expected[name] = says
    os.symlink(folder / "loop-b.jpg", folder / "loop-a.jpg")
    os.symlink(folder / "loop-a.jpg", folder / "loop-b.jpg")
    expected["loop-a.jpg"] = expected["loop-b.jpg"] = "symbolic links"
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    expected["dangling.jpg"] = "dangling"
    unreadable = folder / "unreadable.jpg"
    unreadable.write_bytes(encoded(picture(), "JPEG"))
    unreadable.chmod(0)
    expected["unreadable.jpg"] = "Permission denied"
    return expected


def deny_reading_as_root(monkeypatch, path: Path) -> None:
    """chmod 0 does not stop root: where the tests run as root, opening `path` is made to fail the way it
    fails for anyone else (EACCES), at Python's open(), which PIL calls."""
    if os.geteuid() != 0:
        return
    import builtins

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)


def cmyk_jpeg(cmyk: tuple[int, int, int, int]) -> bytes:
    return encoded(Image.new("CMYK", (16, 8), cmyk), "JPEG", quality=100)


def exif_rotated_jpeg(orientation: int) -> tuple[bytes, np.ndarray]:
    """A 32x16 JPEG stored unrotated with an EXIF Orientation tag, and the pixels a viewer shows."""
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:8, :8] = (255, 0, 0)  # a red square in the stored top-left corner
    stored[8:, 24:] = (0, 0, 255)  # a blue one in the bottom-right
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(Image.fromarray(stored), "JPEG", quality=100, exif=exif.tobytes())
    shown = {1: stored, 3: np.rot90(stored, 2), 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[orientation]
    return data, np.ascontiguousarray(shown)


def grey(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8), mode="L")


def bad_masks(height: int, width: int, classes: int) -> dict[str, tuple[Callable[[Path], None], str]]:
    """Every way a mask for a `height` x `width` image of `classes` classes can be wrong:
    {fault: (write it at a path, what the error about it must say)}."""

    def truncated(path: Path) -> None:
        grey(np.zeros((height, width))).save(path)
        path.write_bytes(path.read_bytes()[:40])

    return {
        "label out of range": (lambda p: grey(np.full((height, width), classes + 3)).save(p),
                               f"holds the label {classes + 3}"),
        "wrong size": (lambda p: grey(np.zeros((height - 1, width))).save(p), f"is {width}x{height - 1} but its image"),
        "colour mask": (lambda p: Image.new("RGB", (width, height), (255, 0, 0)).save(p), "is an RGB image"),
        "truncated": (truncated, "cannot read mask"),
        "not an image": (lambda p: p.write_text("mask"), "cannot read mask"),
    }  # fmt: skip
