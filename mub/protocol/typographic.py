"""The typographic cue: the cue's text written into the item's image (``--cue typographic``).

Pure and deterministic: :func:`render_cue` draws with the bitmap font Pillow
ships inside its own code (``ImageFont.load_default_imagefont``), scaled by a
whole factor with nearest-neighbour resampling. That font needs no FreeType,
so every machine with the same Pillow draws the same pixels;
``load_default(size=...)`` would give the bundled Aileron font through
FreeType, whose antialiasing follows the FreeType build (and silently becomes
the bitmap font where Pillow has no FreeType). The bitmap font covers Latin-1
only: :func:`check_text` refuses other characters before a run starts.

The text sits in a band across the image's full width (top, bottom or
centre), on a box of ``box`` colour blended at ``opacity`` (``box=none``: no
box), wrapped at word boundaries to the width inside ``margin``. Text that
cannot fit the image even at the font's own size raises :class:`CueDoesNotFit`
(an item error: the draw is not asked with a cut-off cue).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Mapping, Sequence

import PIL
from PIL import Image, ImageColor, ImageDraw, ImageFont, features

PLACEMENTS = ("top", "bottom", "center")
NO_BOX = "none"
LINE_GAP = 2  # font pixels between lines, before scaling
FONT = "Pillow's built-in bitmap font (ImageFont.load_default_imagefont), scaled by whole factors, nearest-neighbour"
MODES = ("image-only", "both")  # whether the cue's text is also in the stage-2 prompt


class CueDoesNotFit(ValueError):
    """The cue's text does not fit the image even at the font's own size."""


@dataclass(frozen=True)
class CueStyle:
    """How the cue is drawn; every field is a ``--cue-style KEY=VALUE``."""

    placement: str = "bottom"  # one of PLACEMENTS: where the band of text sits
    size: float = 0.06  # one line's height as a share of the image's height (rounded to whole font scales, at least 1)
    color: str = "#000000"  # the text's colour (any Pillow colour name or #rrggbb; recorded as #rrggbb)
    box: str = "#ffffff"  # the band's colour behind the text, or "none"
    opacity: float = 1.0  # the box's opacity, 0 (invisible) to 1 (opaque)
    margin: int = 4  # pixels between the text and the band's and image's edges

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"--cue-style placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"--cue-style size is a line's share of the image height, above 0 and at most 1; got {self.size:g}")
        if not 0.0 <= self.opacity <= 1.0:
            raise ValueError(f"--cue-style opacity must be between 0 and 1, got {self.opacity:g}")
        if not 0 <= self.margin <= 1000:
            raise ValueError(f"--cue-style margin is in pixels, 0 to 1000; got {self.margin}")
        _rgb(self.color, "color")
        if self.box != NO_BOX:
            _rgb(self.box, "box")


def _rgb(colour: str, key: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(colour)[:3]
    except ValueError:
        raise ValueError(f"--cue-style {key}={colour!r} is not a colour; give a name such as red or #rrggbb") from None


def parse_style(text: str | None) -> CueStyle:
    """``--cue-style placement=top,size=0.1,...``: the style with those fields changed; colours recorded as #rrggbb."""
    if not text:
        return CueStyle()
    types = {f.name: f.type for f in fields(CueStyle)}
    values: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in types:
            raise ValueError(f"--cue-style takes KEY=VALUE pairs joined by commas, KEY one of {', '.join(types)}; got {part!r}")
        try:
            values[key] = {"float": float, "int": int}.get(types[key], str)(value)
        except ValueError:
            raise ValueError(f"--cue-style {key} takes a {types[key]}, got {value!r}") from None
    style = CueStyle(**values)
    hexed = {
        key: "#{:02x}{:02x}{:02x}".format(*_rgb(getattr(style, key), key)) for key in ("color", "box") if getattr(style, key) != NO_BOX
    }
    return CueStyle(**{**asdict(style), **hexed})


def check_text(text: str) -> None:
    """Refuse text the bitmap font cannot draw (outside Latin-1), naming the first such character."""
    for position, char in enumerate(text):
        if ord(char) > 0xFF:
            raise ValueError(
                f"the typographic cue's text has {char!r} at position {position}, which Pillow's built-in font cannot draw "
                "(Latin-1 only); write the template in Latin-1 characters"
            )


def record(style: CueStyle, mode: str) -> dict[str, Any]:
    """What ``run.json`` records under ``"typographic"``: the style, the mode and what the drawing depends on (the
    Pillow that draws, and the zlib it compresses the PNG with: the same pixels may be other PNG bytes elsewhere)."""
    return {**asdict(style), "mode": mode, "font": FONT, "pillow": PIL.__version__, "zlib": features.version("zlib")}


# A record's keys and their JSON types (bool is no number here); the versions and the font are short texts.
RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "placement": (str,), "size": (int, float), "color": (str,), "box": (str,), "opacity": (int, float), "margin": (int,),
    "mode": (str,), "font": (str,), "pillow": (str,), "zlib": (str,),
}  # fmt: skip
MAX_RECORDED_CHARS = 200  # of a recorded text (FONT is the longest mub writes)
OPTIONAL_KEYS = ("zlib",)  # runs recorded before mub kept the zlib version lack it


def check_record(recorded: Any) -> None:
    """``ValueError`` unless ``recorded`` is a ``"typographic"`` record as :func:`record` writes one: its keys (an older
    one without zlib too), each of its type, texts at most MAX_RECORDED_CHARS, a valid style and mode."""
    if not isinstance(recorded, dict) or not set(RECORD_TYPES) - set(OPTIONAL_KEYS) <= set(recorded) <= set(RECORD_TYPES):
        raise ValueError(f"not an object of the rendering settings mub records ({', '.join(RECORD_TYPES)})")
    for key, value in recorded.items():
        if isinstance(value, bool) or not isinstance(value, RECORD_TYPES[key]) or (isinstance(value, str) and len(value) > MAX_RECORDED_CHARS):
            raise ValueError(f"{key} is not a {RECORD_TYPES[key][0].__name__} as mub records it")
    if recorded["mode"] not in MODES:
        raise ValueError(f"mode is not one of {', '.join(MODES)}")
    style_of(recorded)  # a style out of range raises ValueError naming the field


def style_of(recorded: Mapping[str, Any] | None) -> CueStyle | None:
    """The style a ``run.json`` ``"typographic"`` record holds; None for a run under another cue."""
    if recorded is None:
        return None
    return CueStyle(**{f.name: recorded[f.name] for f in fields(CueStyle)})


def cue_in_prompt(recorded: Mapping[str, Any] | None) -> bool:
    """Whether the stage-2 prompt holds the cue's text: always, except for a typographic run in image-only mode."""
    return recorded is None or recorded["mode"] == "both"


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` font pixels: greedy at spaces, a longer word cut where it must be,
    line breaks kept."""
    font = _font()
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # the word alone is too wide, or starts the new line
                if line and font.getlength(line + char) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def _line_height() -> int:
    """One line's height in the font's own pixels (unscaled)."""
    return _font().getbbox("A")[3]


def _block_height(lines: Sequence[str]) -> int:
    """The height of ``lines`` drawn one under the other, in the font's own pixels (unscaled)."""
    return len(lines) * (_line_height() + LINE_GAP) - LINE_GAP


def _layout(text: str, image_size: tuple[int, int], style: CueStyle) -> tuple[int, list[str]]:
    """The largest whole scale, up to the style's size, at which the wrapped text fits; with its lines."""
    width, height = image_size
    target = max(1, round(style.size * height / _line_height()))
    for scale in range(target, 0, -1):
        inner = (width - 2 * style.margin) // scale
        if inner < _font().getlength("W"):
            continue
        lines = wrap(text, inner)
        block = _block_height(lines) * scale
        if block + 2 * style.margin <= height and all(_font().getlength(line) <= inner for line in lines):
            return scale, lines
    raise CueDoesNotFit(
        f"the typographic cue ({len(text)} characters) does not fit the {width}x{height} image even at the font's own "
        f"size with margin {style.margin}; lower --cue-style margin or shorten the template"
    )


def render_cue(image: Image.Image, text: str, style: CueStyle = CueStyle()) -> Image.Image:
    """A new RGB image: ``image`` with ``text`` drawn in a band as ``style`` says (``image`` is not changed)."""
    check_text(text)
    base = image.convert("RGB")
    width, height = base.size
    scale, lines = _layout(text, base.size, style)
    font, line_height = _font(), _line_height()
    block_height = _block_height(lines)
    band_height = block_height * scale + 2 * style.margin
    top = {"top": 0, "bottom": height - band_height, "center": (height - band_height) // 2}[style.placement]
    if style.box != NO_BOX and style.opacity > 0:
        # Blended over the band only: a 40-megapixel image gets no full-size RGBA copy.
        area = (0, top, width, top + band_height)
        box = Image.new("RGBA", (width, band_height), (*_rgb(style.box, "box"), round(style.opacity * 255)))
        base.paste(Image.alpha_composite(base.crop(area).convert("RGBA"), box).convert("RGB"), area)
    # The text as a 1-bit mask at the font's size, each line centred, then enlarged by whole pixels.
    block_width = max(int(font.getlength(line)) for line in lines) or 1
    mask = Image.new("L", (block_width, block_height), 0)
    draw = ImageDraw.Draw(mask)
    for number, line in enumerate(lines):
        x = (block_width - int(font.getlength(line))) // 2
        draw.text((x, number * (line_height + LINE_GAP)), line, fill=255, font=font)
    mask = mask.resize((block_width * scale, block_height * scale), Image.Resampling.NEAREST)
    left = (width - mask.width) // 2
    base.paste(_rgb(style.color, "color"), (left, top + style.margin, left + mask.width, top + style.margin + mask.height), mask)
    return base


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG, with fixed settings and no metadata: the same bytes every run with the same Pillow."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()
