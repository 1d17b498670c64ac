"""Request bodies to pixels, safely: whatever a client sends, the answer is an image or a
`BadImage` naming the problem (the app turns it into a 4xx with a JSON error).

The size is checked from the header before a single pixel is decoded (a 100-megapixel image
or a decompression bomb is refused without allocating it); Pillow's own bomb limit is set to the
same bound as a second line; a truncated file is an error, never half an image (Pillow's
LOAD_TRUNCATED_IMAGES stays off). Pixels then go through the harness's one decoder,
`harness.accuracy.loader.decode_image`, exactly as the accuracy pass and the end-to-end scope see
them (RGB, EXIF orientation not applied).
"""

from __future__ import annotations

import io

import numpy as np

from harness.accuracy.loader import decode_image

# What the server accepts; Pillow opens many more formats (and more attack surface).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
CONTENT_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG",
                 "image/webp": "WEBP", "image/bmp": "BMP", "application/octet-stream": None}


class BadImage(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def set_pillow_limits(max_pixels: int) -> None:
    """Pillow warns past MAX_IMAGE_PIXELS and raises past twice that: make the warning an
    error at the server's own limit."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode(body: bytes, max_pixels: int) -> np.ndarray:
    """An HxWx3 uint8 RGB array, or BadImage (400 not an image / truncated, 413 too large)."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadImage(400, "empty_body", "the request has no image: the body is empty")
    try:
        with Image.open(io.BytesIO(body), formats=FORMATS) as img:
            width, height = img.size
    except UnidentifiedImageError:
        raise BadImage(400, "not_an_image", f"the body is not an image in a format the server accepts ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(413, "image_too_large", f"the image has more than {max_pixels:,} pixels") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(400, "bad_image", f"the image header cannot be read: {exc}") from None
    if width <= 0 or height <= 0:
        raise BadImage(400, "bad_image", f"the image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise BadImage(413, "image_too_large", f"the image is {width}x{height} = {width * height:,} pixels; "
                                               f"the server takes at most {max_pixels:,}")
    try:
        pixels = decode_image(io.BytesIO(body))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(413, "image_too_large", f"the image has more than {max_pixels:,} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # "image file is truncated", "broken data stream", ...
        raise BadImage(400, "bad_image", f"the image cannot be decoded: {exc}") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise BadImage(400, "bad_image", f"the image decodes to an array of shape {pixels.shape}")
    return pixels
