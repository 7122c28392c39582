"""Shrinking an image before it is sent (``--image-max-side``): fewer bytes on the wire and, for
most models, fewer prompt tokens.

Pillow (the ``images`` extra) is imported only when a run shrinks. The aspect ratio is kept; a PNG
stays a PNG (lossless: text and diagrams stay sharp), any other format becomes a JPEG at
JPEG_QUALITY. An image whose longer side is within the limit goes as it is, byte for byte.
"""

from __future__ import annotations

import io

from ..errors import ConfigError, ImageError
from .tokens import image_size

#: JPEG quality of a shrunk JPEG, GIF or WEBP (Pillow's scale, 1-95).
JPEG_QUALITY = 90


def require_pillow() -> None:
    """A ConfigError, before anything is spent, when shrinking is asked for without Pillow."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ConfigError("--image-max-side needs Pillow: pip install 'mpinfer[images]'") from None


def shrink(data: bytes, mime: str, max_side: int) -> tuple[bytes, str]:
    """The image scaled so that its longer side is ``max_side`` pixels, and its MIME type; the
    bytes as they are when it is no larger. An ImageError when Pillow cannot read it."""
    size = image_size(data)
    if size is not None and max(size) <= max_side:
        return data, mime
    try:
        from PIL import Image
    except ImportError:
        raise ImageError("shrinking needs Pillow: pip install 'mpinfer[images]'") from None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = opened.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode the image to shrink it: {exc}") from None
    width, height = image.size
    if max(width, height) <= max_side:
        return data, mime
    scale = max_side / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    out = io.BytesIO()
    if mime == "image/png":
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA")  # a palette would be resized without interpolation
        image.resize(target, Image.Resampling.LANCZOS).save(out, "PNG")
        return out.getvalue(), mime
    image = image.convert("RGB")  # JPEG has no alpha nor palette; a GIF's first frame
    image.resize(target, Image.Resampling.LANCZOS).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), "image/jpeg"
