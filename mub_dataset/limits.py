"""Bounds on what one item may hold, checked where items are made (build, import) and again where they are asked.

An item over a bound is refused at build and import, naming the item; an item that reaches a run anyway
(a dataset made elsewhere, an older build) becomes an error on that item, never the end of the run. The
bounds are in README's limits table.
"""

from __future__ import annotations

import io
import re
from typing import Any, Mapping, Sequence

from PIL import Image

# Largest image, in pixels, decoded. Checked from the header, before any pixel is decoded: a 13000 x 13000
# 1-bit PNG is 284 KB on disk, under Pillow's own bomb limit (178 megapixels), and 507 MB once decoded to RGB.
MAX_PIXELS = 40_000_000
# Longest question, option or note, in characters. MUB's longest question is under 2,000; a 5 MB question
# made the processor try to allocate terabytes.
MAX_TEXT_CHARS = 20_000
# Options are labelled A to Z.
MAX_OPTIONS = 26

# Strings that a vision-language processor reads as an image placeholder, so that the text seems to hold more
# images than the request carries ("Found total 5 <image> tokens and 4 images"): <image> (LLaVA, Idefics,
# PaliGemma), <|image|> (Mllama), <|image_pad|>/<|vision_start|> (Qwen2-VL), <start_of_image> and
# <image_soft_token> (Gemma 3), <img>/<IMG_CONTEXT> (InternVL), <|image_1|> (Phi-3-vision), <global-img> and
# <row_1_col_1> (Idefics3), [IMG]/[IMG_BREAK]/[IMG_END] (Pixtral), and the same for video.
IMAGE_TOKEN = re.compile(
    r"<\|?/?[\w-]*(?:image|img|vision|video)[\w-]*\|?>|\[IMG(?:_BREAK|_END)?\]|<row_\d+_col_\d+>", re.IGNORECASE
)


def text_problem(field: str, text: str) -> str | None:
    """Why ``text`` (one question, option or note) cannot be asked, or None."""
    if len(text) > MAX_TEXT_CHARS:
        return f"{field} is {len(text)} characters long, over the limit of {MAX_TEXT_CHARS}; shorten it"
    token = IMAGE_TOKEN.search(text)
    if token:
        return (
            f"{field} holds {token.group()!r}, which a model's processor reads as an image placeholder; "
            "reword it (e.g. 'the image')"
        )
    return None


def item_problem(row: Mapping[str, Any]) -> str | None:
    """Why an item (a MUB row: question, choices, notes) cannot be asked, or None: the first problem found."""
    choices: Sequence[str] = row.get("choices") or ()
    if len(choices) > MAX_OPTIONS:
        return f"it has {len(choices)} options, more than the {MAX_OPTIONS} letters A-Z; keep at most {MAX_OPTIONS}"
    fields = [("question", row.get("question") or "")]
    fields += [(f"option {chr(ord('A') + i)}", text) for i, text in enumerate(choices)]
    for name in ("misleading_notes", "guiding_notes"):
        fields += [(f"{name}[{i}]", note) for i, note in enumerate(row.get(name) or ())]
    return next((problem for field, text in fields if (problem := text_problem(field, text))), None)


class ImageTooLargeError(ValueError):
    """An image with more pixels than the cap (found from its header, before decoding)."""


class UnreadableImageError(ValueError):
    """Bytes that do not decode to a whole image."""


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``Image.open`` of ``data`` (lazy: only the header is read), refused when it has more than ``max_pixels``.

    Use it as ``with open_image(data) as image: image.load()``; the pixels are decoded only after the check.
    """
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(
            f"it is {width} x {height} = {width * height} pixels, over the limit of {max_pixels}; downscale the image"
        )
    return image


def check_image(data: bytes, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse (ValueError saying why and the fix) an image over ``max_pixels`` or one Pillow cannot decode whole.

    ``load()``, not only ``verify()``: ``verify()`` reads the headers and accepts a JPEG cut off mid-scan,
    which then fails at run time.
    """
    try:
        with open_image(data, max_pixels) as image:
            image.load()
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:  # before OSError/ValueError: say why it was not decoded
        raise ImageTooLargeError(f"it is too large to decode safely ({exc}); replace the file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"it is not a readable image ({exc}); replace the file") from None
