"""Re-encoding images to fit Discord's 10 MiB per-file limit: seconds per image and output bytes.

Worst case for size: photographic noise over a gradient, delivered as PNG (as
providers send them), at 1K, 2K and 4K. The bot's ``fit_within`` runs off the
event loop; the loop's lag is measured meanwhile. Baseline: one plain Pillow
JPEG encode of the same picture, the least work any re-encoding can do.

    python -m bench.delivery [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

from PIL import Image

from bench.common import LoopLag, machine
from bot.images import fit_within
from providers.base import GeneratedImage, pixel_size

LIMIT = 10 * 1024 * 1024


def photographic_png(width: int, height: int) -> GeneratedImage:
    """Noise over a smooth gradient: compresses about as badly as a real photograph."""
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 40) for _ in range(3)])
    gradient = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    picture = Image.blend(noise, gradient, 0.35)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return GeneratedImage(buffer.getvalue(), "image/png", width, height)


def baseline_jpeg(image: GeneratedImage) -> tuple[float, int]:
    started = time.perf_counter()
    with Image.open(io.BytesIO(image.data)) as picture:
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="JPEG", quality=92)
    return time.perf_counter() - started, buffer.tell()


async def main(quick: bool) -> None:
    resolutions = ["1K", "2K"] if quick else ["1K", "2K", "4K"]
    repeats = 1 if quick else 3
    print(f"bench.delivery on {machine()}; limit {LIMIT / 1_048_576:.0f} MiB per file")
    print(
        f"{'size':>4} {'pixels':>11} {'PNG in':>10} {'out':>10} {'fit s':>7} {'JPEG s':>7} {'ratio':>6} {'loop lag p99':>13}"
    )
    ratios = []
    for resolution in resolutions:
        width, height = pixel_size(resolution, "1:1")
        fit_seconds, base_seconds, out_bytes = [], [], 0
        images = [photographic_png(width, height) for _ in range(repeats)]
        # Only the bot's work is under the lag meter; making the pictures is not.
        async with LoopLag() as lag:
            for image in images:
                started = time.perf_counter()
                fitted = await fit_within(image, LIMIT)
                fit_seconds.append(time.perf_counter() - started)
                out_bytes = len(fitted.data)
                seconds, _ = await asyncio.to_thread(baseline_jpeg, image)
                base_seconds.append(seconds)
        fit, base = min(fit_seconds), min(base_seconds)
        ratios.append(fit / base if base else 0.0)
        print(
            f"{resolution:>4} {width:>5}x{height:<5} {len(image.data) / 1_048_576:8.1f}MB "
            f"{out_bytes / 1_048_576:8.1f}MB {fit:7.2f} {base:7.2f} {ratios[-1]:6.2f} "
            f"{lag.p99 * 1000:10.1f} ms"
        )
    print(f"delivery: worst fit/JPEG ratio {max(ratios):.2f} (fit_within vs one plain JPEG encode)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1K and 2K only, once")
    asyncio.run(main(parser.parse_args().quick))
