"""Decoding image files into RGB, with errors that name the file.

Whatever a file holds, `load_image` gives an RGB picture as a viewer shows it (EXIF orientation
applied, any mode converted) or raises `BadImageError` naming the file: a missing, empty,
truncated or corrupt file, a file that is no image, a directory entry that cannot be opened
(a symlink loop, a dangling link, no permission), and an image larger than `MAX_IMAGE_PIXELS`
(a decompression bomb: a small file that would decode to gigabytes) are all refused by name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# The largest image decoded, in pixels: PIL's own default (about 89.5 megapixels, 0.25 GiB as RGB).
# Checked from the header, before any pixel is decoded. Raise it (vitlab.data.images.MAX_IMAGE_PIXELS
# = ...) to read larger scans.
MAX_IMAGE_PIXELS = 89_478_485

# Added to the error about the first bad file where the command could leave such files out instead.
SKIP_HINT = " (pass --skip-bad-images to skip such files)"


class BadImageError(ValueError):
    """An image file that cannot be decoded; `path` names it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = Path(path), reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: grayscale, palette, RGBA (composited on black), CMYK, 16-bit and float."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB") if image.mode != "RGB" else image


def check_pixel_count(path: str | Path, size: tuple[int, int]) -> None:
    """Refuse an image whose header declares more than MAX_IMAGE_PIXELS pixels (or none)."""
    width, height = size
    if width < 1 or height < 1:
        raise BadImageError(path, f"its header declares a {width}x{height} image")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImageError(
            path,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,} pixels "
            "(a decompression bomb?); raise vitlab.data.images.MAX_IMAGE_PIXELS to read it",
        )


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB, oriented as its EXIF tag says; any failure raises BadImageError."""
    path = Path(path)
    if path.is_dir():
        raise BadImageError(path, "it is a directory")
    if path.exists() and not path.is_file():
        raise BadImageError(path, "it is not a regular file (a pipe, socket or device)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below
            with Image.open(path) as image:
                check_pixel_count(path, image.size)
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except BadImageError:
        raise
    except FileNotFoundError as err:
        reason = "a dangling symbolic link" if path.is_symlink() else "no such file"
        raise BadImageError(path, reason) from err
    except Image.DecompressionBombError as err:
        raise BadImageError(path, f"{err}; vitlab's limit is {MAX_IMAGE_PIXELS:,} pixels") from err
    except MemoryError:
        raise
    except Exception as err:  # PIL raises many types on corrupt data (OSError, SyntaxError, struct.error, ...)
        raise BadImageError(path, _reason(err)) from err


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    return text or type(err).__name__
