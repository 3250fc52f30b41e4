"""The ``local`` provider: offline procedural art drawn with Pillow from the prompt.

No network and no API key. The prompt (with the image's number and the
provider model) seeds a random generator that picks a palette, a gradient sky
and layers of translucent shapes, so the same request always gives the same
picture and different prompts give different ones. It lets the quick start and
the tests make real images without any provider account.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import random

from PIL import Image, ImageDraw, ImageFilter

from providers.base import (
    GeneratedImage,
    GenerationResult,
    ImageDone,
    ImageProvider,
    ImageRequest,
    ProviderConfig,
    pixel_size,
)

# Drawing happens at most at this size and is scaled up: shapes stay smooth and
# a 4K image costs little more than a 1K one.
_CANVAS_LONG_SIDE = 768

_WORD_COLOURS = {
    "red": (200, 40, 50),
    "orange": (240, 140, 40),
    "yellow": (240, 210, 60),
    "green": (60, 160, 80),
    "blue": (40, 90, 200),
    "purple": (130, 60, 170),
    "pink": (240, 130, 180),
    "sunset": (250, 110, 60),
    "dusk": (120, 70, 140),
    "forest": (30, 100, 50),
    "ocean": (20, 100, 160),
    "sea": (30, 120, 170),
    "snow": (235, 240, 250),
    "night": (20, 25, 60),
    "fire": (230, 70, 20),
    "gold": (210, 170, 60),
}


class LocalProvider(ImageProvider):
    name = "local"

    def __init__(self, config: ProviderConfig) -> None:
        raw_delay = config.options.get("delay_seconds", "0")
        try:
            self.delay_seconds = float(raw_delay)
        except ValueError:
            raise ValueError(
                f"delay_seconds must be a number of seconds, not {raw_delay!r}"
            ) from None
        if not math.isfinite(self.delay_seconds) or self.delay_seconds < 0:
            raise ValueError(f"delay_seconds must be zero or more, not {raw_delay!r}")

    async def generate(self, request: ImageRequest, on_image_done: ImageDone) -> GenerationResult:
        width, height = pixel_size(request.resolution, request.aspect_ratio)
        images = []
        for index in range(request.count):
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            seed = _seed(request.provider_model, request.prompt, index)
            data = await asyncio.to_thread(draw_png, request.prompt, seed, width, height)
            images.append(GeneratedImage(data, "image/png", width, height))
            await on_image_done(index + 1, request.count)
        return GenerationResult(tuple(images))


def _seed(provider_model: str, prompt: str, index: int) -> int:
    digest = hashlib.sha256(f"{provider_model}\0{prompt}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def draw_png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """One deterministic abstract picture of exactly ``width`` × ``height``, as PNG bytes."""
    rng = random.Random(seed)
    scale = _CANVAS_LONG_SIDE / max(width, height)
    canvas_size = (max(16, round(width * scale)), max(16, round(height * scale)))
    palette = _palette(prompt, rng)

    picture = _gradient(canvas_size, palette[0], palette[1])
    layer = Image.new("RGBA", canvas_size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    canvas_w, canvas_h = canvas_size
    for _ in range(rng.randint(10, 18)):
        colour = (*rng.choice(palette[2:]), rng.randint(90, 200))
        x, y = rng.uniform(0, canvas_w), rng.uniform(0, canvas_h)
        radius = rng.uniform(0.03, 0.22) * max(canvas_size)
        shape = rng.random()
        if shape < 0.45:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        elif shape < 0.8:
            corners = rng.randint(3, 6)
            turn = rng.uniform(0, math.tau)
            points = [
                (
                    x + radius * math.cos(turn + k * math.tau / corners),
                    y + radius * math.sin(turn + k * math.tau / corners),
                )
                for k in range(corners)
            ]
            draw.polygon(points, fill=colour)
        else:
            amplitude, phase = radius / 3, rng.uniform(0, math.tau)
            wave = [
                (step, y + amplitude * math.sin(phase + step / max(1.0, radius) * math.pi))
                for step in range(0, canvas_w + 8, 8)
            ]
            draw.line(wave, fill=colour, width=max(2, round(radius / 10)))
    layer = layer.filter(ImageFilter.GaussianBlur(radius=1.2))
    picture = Image.alpha_composite(picture, layer).convert("RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _palette(prompt: str, rng: random.Random) -> list[tuple[int, int, int]]:
    """Five colours: two for the sky, three for shapes, nudged toward colours the prompt names."""
    words = {word.strip(".,!?;:'\"").lower() for word in prompt.split()}
    named = [colour for word, colour in _WORD_COLOURS.items() if word in words]
    colours = []
    for position in range(5):
        if named and (position < len(named) or rng.random() < 0.4):
            base = named[position % len(named)]
            colours.append(tuple(_clamp(c + rng.randint(-30, 30)) for c in base))
        else:
            colours.append(tuple(rng.randint(20, 235) for _ in range(3)))
    return colours  # type: ignore[return-value]


def _gradient(size: tuple[int, int], top: tuple[int, ...], bottom: tuple[int, ...]) -> Image.Image:
    mask = Image.linear_gradient("L").resize(size)
    return Image.composite(
        Image.new("RGBA", size, (*bottom, 255)), Image.new("RGBA", size, (*top, 255)), mask
    )


def _clamp(value: int) -> int:
    return max(0, min(255, value))
