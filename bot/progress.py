"""Progress events: what a running generation reports, so every adapter can show it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Queued:
    """The generation waits for a free slot at the provider."""

    position: int


@dataclass(frozen=True)
class Generating:
    """``finished`` of ``total`` images are done."""

    model_name: str
    finished: int
    total: int


@dataclass(frozen=True)
class Delivering:
    """Images are being posted where the user asked."""

    count: int


ProgressEvent = Queued | Generating | Delivering
