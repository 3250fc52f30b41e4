"""Subjects: a named set of 1 to 6 reference images of one person, kept by its owner and added
to /imagine by name (``subject:<name>``).

Every adapter's /subject goes through ``Subjects``; images are first made
acceptable by ``bot.references`` (type, size, pixels checked; metadata
stripped), the same rule as an attached reference, and only then stored. A
subject is private: every read and write names the account that owns it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import ledger
from bot import messages, references
from bot.errors import RequestError
from bot.parsing import ImagineOptions, visible_text
from providers.base import ReferenceImage

_NAME = re.compile(rf"[a-z0-9_-]{{1,{messages.SUBJECT_NAME_MAX_CHARS}}}")


def subject_name(typed: str) -> str:
    """The name as stored (names are case-insensitive), or a ``RequestError`` saying what one is."""
    name = visible_text(typed).strip().lower()
    if not _NAME.fullmatch(name):
        raise RequestError(messages.bad_subject_name(typed))
    return name


def check_new_subject(typed_name: str, images: int) -> str:
    """The name of a subject about to be saved with that many images, or a ``RequestError``;
    adapters ask before they download or read any image."""
    if not 1 <= images <= messages.SUBJECT_MAX_IMAGES:
        raise RequestError(messages.subject_image_count(images))
    return subject_name(typed_name)


async def image_from_file(path: Path) -> ReferenceImage:
    """An image file from disk (the console's /subject save), checked as an attachment is."""
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
        claimed = references.check_attachment(path.name, references.type_by_name(path.name), size)
        data = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise RequestError(messages.file_unreadable(str(path))) from None
    return await references.prepare(path.name, claimed, data)


class Subjects:
    """Saving, listing, deleting and using an account's subjects."""

    def __init__(self, ledger_: ledger.Ledger, bytes_per_account: int) -> None:
        self.ledger = ledger_
        self.bytes_per_account = bytes_per_account

    async def save(self, account: str, typed_name: str, images: Sequence[ReferenceImage]) -> str:
        """Store ``images`` (already prepared by ``bot.references``) under the name; the sentence
        to answer with. Refused with a ``RequestError`` for a bad name, too few or too many
        images, or the account's storage full."""
        name = check_new_subject(typed_name, len(images))
        stored = [ledger.QuoteReference(image.mime_type, image.data) for image in images]
        try:
            replaced = await self.ledger.save_subject(
                account, name, stored, limit_bytes=self.bytes_per_account
            )
        except ledger.SubjectStorageFull as full:
            raise RequestError(
                messages.subject_storage_full(full.stored, full.adding, full.limit)
            ) from None
        return messages.subject_saved(name, len(images), replaced)

    async def listing(self, account: str) -> str:
        found = await self.ledger.list_subjects(account)
        if not found:
            return messages.NO_SUBJECTS
        return messages.subjects_list(
            [(subject.name, subject.images, subject.byte_size) for subject in found]
        )

    async def names(self, account: str) -> list[str]:
        """``account``'s subject names, for autocomplete."""
        return [subject.name for subject in await self.ledger.list_subjects(account)]

    async def delete(self, account: str, typed_name: str) -> str:
        name = subject_name(typed_name)
        if not await self.ledger.delete_subject(account, name):
            raise RequestError(messages.no_such_subject(name))
        return messages.subject_deleted(name)

    async def added_to(self, account: str, options: ImagineOptions) -> ImagineOptions:
        """``options`` with the images of ``account``'s chosen subject after any attached ones.

        Only the account's own subjects are found: another's name is "no such subject".
        """
        if options.subject is None:
            return options
        name = subject_name(options.subject)
        images = await self.ledger.subject_images(account, name)
        if not images:
            raise RequestError(messages.no_such_subject(name))
        added = tuple(ReferenceImage(image.data, image.media_type) for image in images)
        return replace(options, subject=name, reference_images=options.reference_images + added)
