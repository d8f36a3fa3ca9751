"""Reading image files for every data source and for prediction: one place for what can go wrong with a file,
and the record (`Issue`) of a file or annotation row that a data source skips.

- EXIF orientation is applied, so a portrait phone photo arrives upright (a camera stores it sideways with an
  Orientation tag).
- A photo above `max_pixels` is refused from its header, before it is decoded, with its size in the error:
  decoding a 200-megapixel photo takes gigabytes, and Pillow's own decompression-bomb check would abort the
  whole run instead of skipping the file.
- Every failure is a ValueError (or FileNotFoundError) naming the file, which the callers record as an
  `unreadable` row and go on.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 100 megapixels: above the largest ordinary camera photos (a 108 MP phone photo is shrunk by its app to
# ~12 MP unless asked), far below what fills the memory of a two-core machine once decoded
DEFAULT_MAX_PIXELS = 100_000_000
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@contextmanager
def _own_pixel_limit():
    """Pillow's global decompression-bomb limit lifted while our own `max_pixels` check, made on the header
    before any decoding, is in force (so a configured limit above Pillow's default is honoured too)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


class ImageTooLargeError(ValueError):
    pass


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if max_pixels and width * height > int(max_pixels):
        raise ImageTooLargeError(f"image too large: {width}x{height} = {width * height / 1e6:.1f} megapixels, over "
                                 f"the limit of {int(max_pixels) / 1e6:.1f} (max_pixels)")


def read_rgb(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any PIL-readable image (grey, palette TIFF, RGB), turned upright by its EXIF orientation, as uint8 RGB
    (H, W, 3); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            check_pixels(im.size, max_pixels)
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except ImageTooLargeError as err:
        raise ImageTooLargeError(f"{path}: {err}") from None
    except READ_ERRORS as err:
        raise ValueError(f"{path}: unreadable image ({err})") from err


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, or None where Pillow cannot read the format."""
    try:
        with _own_pixel_limit(), Image.open(path) as im:
            return im.size
    except READ_ERRORS:
        return None


def read_grey(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A grey uint8 (H, W) image decoded by OpenCV (which applies the EXIF orientation), its size checked on the
    header first; a ValueError says what is wrong (the caller records it with the file)."""
    size = image_size(Path(path))
    if size is not None:
        check_pixels(size, max_pixels)
    # decoded from the file's bytes: OpenCV's own file reader crashes on a name that is not valid UTF-8
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"unreadable or not an image ({err})") from err
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ValueError("unreadable or not an image")
    return image


def enhance_clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a grey uint8 image."""
    return cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid))).apply(image)


@dataclass
class Issue:
    """A skipped file or annotation row, with why: listed in a cache's report.json, never silently lost."""

    file: str
    reason: str
    line: int | None = None
    split: str | None = None
    annotation: str | None = None  # "csv:line" of the row that named an image with a problem

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# ---- square crops around points (landmark data sets and back ends) ------------------------------------------
def points_square(points: np.ndarray, scale: float) -> tuple[float, float, float]:
    """(x0, y0, side) of the square centred on the points' extent, `scale` times its longer side."""
    lo, hi = points.min(0), points.max(0)
    side = float(max(hi - lo)) * float(scale)
    centre = (lo + hi) / 2
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def crop_square(image: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square [x0, x0 + side) x [y0, y0 + side) of `image` resampled to size x size (black beyond the image);
    pixel-centre convention: photo x -> (x - x0) * size / side + (size / side - 1) / 2."""
    s = size / side
    matrix = np.array([[s, 0, -x0 * s + (s - 1) / 2], [0, s, -y0 * s + (s - 1) / 2]], dtype=np.float64)
    flags = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def to_crop(points: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    s = size / side
    return ((points - np.array([x0, y0])) * s + (s - 1) / 2).astype(np.float32)


def from_crop(points: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """Inverse of `to_crop`: crop pixels -> photo pixels."""
    s = size / side
    return ((np.asarray(points, dtype=np.float64) - (s - 1) / 2) / s + np.array([x0, y0])).astype(np.float32)
