"""One account makes 40 quotes with 10 MB reference images: how much the bot process grows.

Each run is a process of its own (so no run inherits another's heap): the
bot's ``ImagineService`` opens on a SQLite file or, with ``--database
postgresql``, a PostgreSQL database of its own; an account with 1 credit makes
one small warm-up quote, then the 40 quotes as fast as it can, each with a
fresh 10 MB reference, as each download would be. Measured: the process's
peak resident set size during the quotes above what it was before (Linux's
VmHWM, reset just before through ``/proc/self/clear_refs``), and what it
still holds once they are done (the quotes stay valid for ten minutes).

Runs: the limits raised so every quote is accepted (1000 MB per account,
100 quotes a minute); the default limits (40 MB per account, 10 quotes a
minute), which refuse most of them. Baseline: the same 40 references made
and dropped one after another, with no bot, the least the bot can grow by.

    python -m bench.references [--quick] [--database postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_database_option, database_name, ledger_database, machine, percentile
from bot.app import open_service
from bot.errors import ImagineError
from bot.parsing import ImagineOptions, validate_request
from bot.settings import Settings
from providers.base import ReferenceImage

REFERENCE_BYTES = 10_000_000
MEBIBYTE = 1_048_576
RAISED = {"reference_storage_mb_per_account": 1000, "quotes_per_minute": 100}
MODELS = """
[models.sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Sketch"
credits_per_image = 1
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 1
max_reference_images = 1
"""


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure (VmRSS now, VmHWM the peak since the last reset), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def reset_peak() -> int:
    """Start counting the peak afresh; the resident size now, in KiB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def growth(before: int) -> dict[str, float]:
    gc.collect()
    return {
        "peak_mib": (status_kib("VmHWM") - before) / 1024,
        "held_mib": (status_kib("VmRSS") - before) / 1024,
    }


def a_reference() -> ReferenceImage:
    return ReferenceImage(os.urandom(REFERENCE_BYTES), "image/png")


async def baseline(count: int) -> dict[str, Any]:
    before = reset_peak()
    for _ in range(count):
        reference = a_reference()
        del reference
    return growth(before)


async def quotes(count: int, database: str, limits: dict[str, int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models.toml"
        models.write_text(MODELS)
        async with ledger_database(database, Path(folder), "references") as database_url:
            settings = Settings(
                _env_file=None, database_url=database_url, models_file=models, **limits
            )
            async with open_service(settings, extra_admins=frozenset({"console:bank"})) as service:
                account = "console:someone"
                await service.credits.grant("console:bank", account, 1, "bench")

                async def quote(reference: ReferenceImage) -> str:
                    options = ImagineOptions(
                        prompt="like this", model="sketch", reference_images=(reference,)
                    )
                    try:
                        await service.quote(account, validate_request(options, service.catalog))
                    except ImagineError as refusal:
                        return refusal.message
                    return ""

                # Every statement of a quote with a reference compiled before the measurement.
                await quote(ReferenceImage(b"warm-up", "image/png"))
                before = reset_peak()
                seconds = []
                refusals: collections.Counter[str] = collections.Counter()
                for _ in range(count):
                    reference = a_reference()
                    started = time.perf_counter()
                    refusal = await quote(reference)
                    del reference
                    seconds.append(time.perf_counter() - started)
                    if refusal:
                        refusals[refusal] += 1
                measured = growth(before)
    return {
        **measured,
        "accepted": count - sum(refusals.values()),
        "refusals": dict(refusals),
        "p50_ms": percentile(seconds, 0.5) * 1000,
        "max_ms": max(seconds) * 1000,
    }


def run_alone(run: str, count: int, database: str) -> dict[str, Any]:
    """One run in a process of its own; its figures as the child printed them."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.references",
            "--run",
            run,
            "--count",
            str(count),
            "--database",
            database,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the {run} run failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def shown(figures: dict[str, Any]) -> str:
    return f"peak +{figures['peak_mib']:.0f} MiB, still held after +{figures['held_mib']:.0f} MiB"


async def main(quick: bool, database: str) -> None:
    count = 6 if quick else 40
    print(
        f"bench.references on {machine()}: one account, {count} quotes with "
        f"{REFERENCE_BYTES / 1e6:g} MB references, ledger on {await database_name(database)}"
    )
    floor = run_alone("baseline", count, database)
    raised = run_alone("raised", count, database)
    default = run_alone("default", count, database)
    print(f"  baseline, {count} references made and dropped: {shown(floor)}")
    print(
        f"  limits raised: {raised['accepted']} of {count} quoted; {shown(raised)}; "
        f"quote p50 {raised['p50_ms']:.0f} ms, slowest {raised['max_ms']:.0f} ms"
    )
    print(f"  default limits: {default['accepted']} of {count} quoted; {shown(default)}")
    for sentence, times in default["refusals"].items():
        print(f"    refused {times}×: {sentence}")
    ratio = raised["peak_mib"] / max(floor["peak_mib"], 1)
    print(
        f"references: peak RSS growth +{raised['peak_mib']:.0f} MiB for {count} quotes "
        f"(baseline +{floor['peak_mib']:.0f} MiB, ratio {ratio:.1f}), "
        f"held after +{raised['held_mib']:.0f} MiB; "
        f"default limits refused {count - default['accepted']} of {count}"
    )


async def child(run: str, count: int, database: str) -> None:
    if run == "baseline":
        figures = await baseline(count)
    else:
        figures = await quotes(count, database, RAISED if run == "raised" else {})
    print(json.dumps(figures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="6 quotes instead of 40 (two past the default limit)"
    )
    parser.add_argument("--run", choices=["baseline", "raised", "default"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=40, help=argparse.SUPPRESS)
    add_database_option(parser)
    arguments = parser.parse_args()
    if arguments.run:
        asyncio.run(child(arguments.run, arguments.count, arguments.database))
    else:
        asyncio.run(main(arguments.quick, arguments.database))
