"""The ``local`` provider: offline procedural art drawn with Pillow from the prompt.

No network and no API key. The prompt, the image's number and the provider
model seed a random generator that picks a colour harmony, a gradient sky with
a soft glow, and layers of translucent circles, rings, polygons and waves, so
the same request always gives the same picture and different prompts give
different ones. A few colour words in the prompt ("sunset", "ocean", "red"...)
tint the palette. It lets the quick start, demos and tests make real images
without any provider account.

The option ``delay_seconds`` (``LOCAL_DELAY_SECONDS``) waits before each image
to imitate a slow provider.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import json
import math
import random

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageProvider,
    ImageRequest,
    ProviderConfig,
    pixel_size,
)
from providers.errors import ProviderError, ProviderTimeout

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]
HSV = tuple[float, float, float]

# Art is composed at most this large and scaled up: a 4K image then costs a
# resize and an encode, not sixteen times the drawing of a 1K one.
_CANVAS_LONG_SIDE = 1024
# Shapes are drawn this many times larger and reduced, which anti-aliases their edges.
_SUPERSAMPLE = 2
# How much smaller than the canvas the blurred background layer is composed.
_BACKDROP_REDUCTION = 4

# Hue offsets of colour harmonies (analogous, complementary, split, triadic):
# random hues side by side rarely look good, related ones usually do.
_HARMONIES: tuple[tuple[float, ...], ...] = (
    (0.0, 0.06, -0.06, 0.12),
    (0.0, 0.5, 0.04, 0.54),
    (0.0, 0.42, 0.58, 0.04),
    (0.0, 0.33, 0.67, 0.06),
)

# Colour words a prompt may use; kept short on purpose, it only tints the palette.
_WORD_COLOURS: dict[str, RGB] = {
    "red": (200, 40, 50),
    "orange": (240, 140, 40),
    "yellow": (240, 210, 60),
    "green": (60, 160, 80),
    "blue": (40, 90, 200),
    "purple": (130, 60, 170),
    "pink": (240, 130, 180),
    "gold": (210, 170, 60),
    "fire": (230, 70, 20),
    "sunset": (250, 110, 60),
    "dusk": (120, 70, 140),
    "forest": (30, 110, 50),
    "ocean": (20, 100, 160),
    "sea": (30, 120, 170),
    "snow": (225, 235, 250),
    "night": (25, 30, 80),
}


class LocalProvider(ImageProvider):
    """Abstract PNGs drawn on this machine from the prompt, optionally after a pretend delay."""

    name = "local"

    def __init__(self, config: ProviderConfig) -> None:
        raw_delay = config.options.get("delay_seconds", "0")
        try:
            delay = float(raw_delay)
        except ValueError:
            raise ValueError(
                f"delay_seconds must be a number of seconds, not {raw_delay!r}"
            ) from None
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"delay_seconds must be zero or more seconds, not {raw_delay!r}")
        self.delay_seconds = delay

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        width, height = pixel_size(request.resolution, request.aspect_ratio)
        images: list[GeneratedImage] = []
        failures: tuple[ProviderError, ...] = ()
        loop = asyncio.get_running_loop()
        deadline = (
            None if request.time_limit_seconds is None else loop.time() + request.time_limit_seconds
        )
        try:
            # One at a time: progress then arrives in order, and a 4K request
            # does not hold several full-size pictures in memory at once.
            async with asyncio.timeout_at(deadline):
                for index in range(request.count):
                    if self.delay_seconds:
                        await asyncio.sleep(self.delay_seconds)
                    seed = image_seed(request.provider_model, request.prompt, index)
                    data = await asyncio.to_thread(draw_png, request.prompt, seed, width, height)
                    images.append(GeneratedImage(data, "image/png", width, height))
                    await on_image_done(index + 1, request.count)
        except TimeoutError:
            # As every provider does at its time limit: the finished images are kept.
            late = ProviderTimeout("the images were not ready before the deadline")
            if not images:
                raise late from None
            failures = (late,)
        return GenerationResult(tuple(images), failures)


def image_seed(provider_model: str, prompt: str, index: int) -> int:
    """The seed of one image; a hash so that nearby prompts still give unrelated pictures."""
    # JSON keeps the parts apart whatever characters the prompt holds.
    key = json.dumps([provider_model, prompt, index], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def draw_png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """One deterministic abstract picture of exactly ``width`` × ``height``, as PNG bytes."""
    rng = random.Random(seed)
    scale = min(1.0, _CANVAS_LONG_SIDE / max(width, height))
    canvas = (max(16, round(width * scale)), max(16, round(height * scale)))
    sky_top, sky_bottom, glow, *inks = _palette(prompt, rng)

    # The background is blurred anyway, so it is composed small, where the
    # blur is cheap, and scaled up without visible loss.
    backdrop = (
        max(16, canvas[0] // _BACKDROP_REDUCTION),
        max(16, canvas[1] // _BACKDROP_REDUCTION),
    )
    picture = _glow(_sky(backdrop, sky_top, sky_bottom, rng), glow, rng)
    _draw_shapes(picture, inks, rng, count=rng.randint(3, 5), size=(0.2, 0.45), opacity=(50, 120))
    picture = picture.filter(ImageFilter.GaussianBlur(radius=max(backdrop) / 80))

    work = (canvas[0] * _SUPERSAMPLE, canvas[1] * _SUPERSAMPLE)
    picture = picture.resize(work, Image.Resampling.BICUBIC)
    _draw_shapes(picture, inks, rng, count=rng.randint(5, 9), size=(0.03, 0.2), opacity=(90, 200))
    picture = picture.reduce(_SUPERSAMPLE)
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)

    buffer = io.BytesIO()
    # Speed over size: these are throwaway pictures, and level 1 is several
    # times faster than the default on a 4K image.
    picture.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _palette(prompt: str, rng: random.Random) -> list[RGB]:
    """Seven colours of one harmony: sky top, sky bottom, glow, then four inks for shapes."""
    words = [word.strip(".,!?;:'\"()").lower() for word in prompt.split()]
    named = list(dict.fromkeys(_WORD_COLOURS[word] for word in words if word in _WORD_COLOURS))
    if named:
        anchors = [_to_hsv(colour) for colour in named]
        # Keep the named colours recognisable: harmonies only nudge them.
        spread = 0.35
    else:
        anchors = [(rng.random(), rng.uniform(0.45, 0.8), rng.uniform(0.6, 0.9))]
        spread = 1.0
    offsets = rng.choice(_HARMONIES)

    def tone(anchor: int, offset: float, saturation: float, value: float) -> RGB:
        hue, base_saturation, base_value = anchors[anchor % len(anchors)]
        hue += offset * spread + rng.uniform(-0.02, 0.02)
        return _to_rgb(
            (hue % 1.0, min(1.0, base_saturation * saturation), min(1.0, base_value * value))
        )

    # A deep top and a light horizon of near hues read as a sky whatever the
    # hue; the glow is a paler horizon, so it lights the sky instead of staining it.
    horizon = offsets[1] * rng.uniform(0.2, 0.5)
    sky_top = tone(0, 0.0, rng.uniform(0.9, 1.2), rng.uniform(0.3, 0.5))
    sky_bottom = tone(1, horizon, rng.uniform(0.7, 1.0), rng.uniform(0.95, 1.2))
    glow = tone(1, horizon, rng.uniform(0.2, 0.45), 1.4)
    inks = [
        tone(k, offsets[k % len(offsets)], rng.uniform(0.8, 1.3), rng.uniform(0.8, 1.3))
        for k in range(1, 5)
    ]
    return [sky_top, sky_bottom, glow, *inks]


def _sky(size: tuple[int, int], top: RGB, bottom: RGB, rng: random.Random) -> Image.Image:
    """A two-colour gradient tilted a little off vertical."""
    ramp = Image.linear_gradient("L").rotate(
        rng.uniform(-35, 35), resample=Image.Resampling.BILINEAR, expand=True
    )
    # 180 px is the largest upright square inside the 256 px ramp turned by up
    # to 35°, so the crop never shows the empty corners the rotation leaves.
    inset = (ramp.width - 180) // 2
    mask = ramp.crop((inset, inset, inset + 180, inset + 180)).resize(
        size, Image.Resampling.BILINEAR
    )
    return Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), mask)


def _glow(picture: Image.Image, colour: RGB, rng: random.Random) -> Image.Image:
    """A soft round light somewhere in the upper part of the picture."""
    width, height = picture.size
    radius = round(rng.uniform(0.35, 0.7) * max(width, height))
    centre = (round(rng.uniform(0.15, 0.85) * width), round(rng.uniform(0.1, 0.55) * height))
    strength = rng.randint(70, 150)
    falloff = ImageOps.invert(Image.radial_gradient("L")).point(lambda p: p * strength // 255)
    mask = Image.new("L", picture.size, 0)
    mask.paste(
        falloff.resize((2 * radius, 2 * radius), Image.Resampling.BILINEAR),
        (centre[0] - radius, centre[1] - radius),
    )
    return Image.composite(Image.new("RGB", picture.size, colour), picture, mask)


def _draw_shapes(
    picture: Image.Image,
    inks: list[RGB],
    rng: random.Random,
    *,
    count: int,
    size: tuple[float, float],
    opacity: tuple[int, int],
) -> None:
    """Translucent shapes blended onto ``picture``, largest first."""
    width, height = picture.size
    long_side = max(width, height)
    draw = ImageDraw.Draw(picture, "RGBA")
    radii = sorted((rng.uniform(*size) * long_side for _ in range(count)), reverse=True)
    for radius in radii:
        colour: RGBA = (*rng.choice(inks), rng.randint(*opacity))
        x, y = rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.05, 1.05) * height
        kind = rng.random()
        if kind < 0.35:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        elif kind < 0.5:
            ring = max(2, round(radius * rng.uniform(0.05, 0.15)))
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius), outline=colour, width=ring
            )
        elif kind < 0.8:
            corners = rng.randint(3, 6)
            turn = rng.uniform(0, math.tau)
            draw.polygon(
                [
                    (
                        x + radius * math.cos(turn + k * math.tau / corners),
                        y + radius * math.sin(turn + k * math.tau / corners),
                    )
                    for k in range(corners)
                ],
                fill=colour,
            )
        else:
            _draw_wave(draw, picture.size, y, radius, colour, rng)


def _draw_wave(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    y: float,
    radius: float,
    colour: RGBA,
    rng: random.Random,
) -> None:
    """Either a filled band like a hill or a sea swell, or a few thin parallel ripples."""
    width, height = size
    amplitude = radius * rng.uniform(0.15, 0.4)
    wavelength = radius * rng.uniform(1.5, 4.0)
    phase = rng.uniform(0, math.tau)
    step = max(4, width // 128)

    def crest(offset: float) -> list[tuple[float, float]]:
        return [
            (px, y + offset + amplitude * math.sin(phase + px / wavelength * math.tau))
            for px in range(-step, width + 2 * step, step)
        ]

    if rng.random() < 0.6:
        band = crest(0)
        draw.polygon([*band, (width + step, height), (-step, height)], fill=colour)
    else:
        line_width = max(2, round(radius / 25))
        for ripple in range(rng.randint(2, 4)):
            draw.line(crest(ripple * line_width * 4), fill=colour, width=line_width)


def _to_hsv(colour: RGB) -> HSV:
    red, green, blue = (channel / 255 for channel in colour)
    return colorsys.rgb_to_hsv(red, green, blue)


def _to_rgb(colour: HSV) -> RGB:
    red, green, blue = colorsys.hsv_to_rgb(*colour)
    return round(red * 255), round(green * 255), round(blue * 255)
