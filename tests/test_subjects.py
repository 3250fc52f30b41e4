"""Subjects (/subject): named sets of a person's reference images, saved once and added to
/imagine by name. Through the console adapter on both databases; the scripted provider
records what it was asked to make.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from bot import messages
from bot.app import open_service
from bot.flow import ImagineService
from bot.settings import Settings
from tests.conftest import FakeClock
from tests.fakes import ScriptedProvider, tiny_png
from tests.test_console_flow import MODELS, ScriptedConsole

OWNER = "console:local"
GUEST = "console:guest"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        output_dir=tmp_path / "out",
        generation_timeout_seconds=5,
        subject_storage_mb=1,
    )


@pytest.fixture
async def service(settings: Settings, clock: FakeClock) -> AsyncIterator[ImagineService]:
    async with open_service(settings, clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        await service.credits.open_account(GUEST, welcome_credits=100)
        yield service


@pytest.fixture
def console(service: ImagineService, settings: Settings) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, settings.output_dir)


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


def pictures(tmp_path: Path, count: int) -> str:
    """``count`` PNG files of different shades, as the paths typed after /subject save."""
    paths = []
    for shade in range(count):
        path = tmp_path / f"face-{shade}.png"
        path.write_bytes(tiny_png(shade))
        paths.append(str(path))
    return " ".join(paths)


def noise_png(side: int) -> bytes:
    """A PNG of random pixels, which does not compress: about 3 bytes a pixel."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


async def quotes_of(service: ImagineService, account: str = OWNER) -> int:
    return len(await service.ledger.history(account, limit=10, include_unconfirmed=True))


async def test_a_subject_is_saved_listed_and_deleted(
    console: ScriptedConsole, tmp_path: Path
) -> None:
    saved = await console.say(f"/subject save Ada {pictures(tmp_path, 2)}")
    assert saved == messages.subject_saved("ada", 2, replaced=False)
    listed = await console.say("/subject list")
    assert listed.startswith("Your subjects:\n• ada: 2 images, ")
    assert await console.say("/subject delete ADA") == messages.subject_deleted("ada")
    assert await console.say("/subject list") == messages.NO_SUBJECTS


async def test_saving_a_name_again_replaces_the_subject(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 3)}")
    again = await console.say(f"/subject save ada {pictures(tmp_path, 1)}")
    assert again == messages.subject_saved("ada", 1, replaced=True)
    assert len(await service.ledger.subject_images(OWNER, "ada")) == 1


async def test_stored_images_are_reencoded_without_their_metadata(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    path = tmp_path / "tagged.png"
    buffer = io.BytesIO()
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Ada Lovelace, 12 Mulberry Lane")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG", pnginfo=text)
    path.write_bytes(buffer.getvalue())
    await console.say(f"/subject save ada {path}")
    [stored] = await service.ledger.subject_images(OWNER, "ada")
    assert b"Mulberry" not in stored.data
    assert stored.media_type == "image/png"


async def test_a_file_that_is_not_an_image_is_refused_by_the_reference_rule(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(b"not a picture at all")
    said = await console.say(f"/subject save ada {path}")
    assert said == messages.reference_not_an_image("notes.png")
    assert await service.ledger.list_subjects(OWNER) == []


async def test_a_bad_name_is_one_sentence(console: ScriptedConsole, tmp_path: Path) -> None:
    said = await console.say(f"/subject save ada.lovelace {pictures(tmp_path, 1)}")
    assert said == messages.bad_subject_name("ada.lovelace")


async def test_more_than_six_images_is_one_sentence(
    console: ScriptedConsole, tmp_path: Path
) -> None:
    said = await console.say(f"/subject save ada {pictures(tmp_path, 7)}")
    assert said == messages.subject_image_count(7)


async def test_a_full_subject_storage_is_one_sentence_and_keeps_nothing(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    large = tmp_path / "large.png"
    large.write_bytes(noise_png(700))  # about 1.4 MB, past SUBJECT_STORAGE_MB=1
    said = await console.say(f"/subject save ada {large}")
    assert said.startswith("Your subjects already take 0.0 MB of your 1.0 MB; these images need")
    assert said.endswith("so delete a subject or save fewer images.")
    assert await service.ledger.list_subjects(OWNER) == []


async def test_a_subjects_images_are_the_quotes_references_and_reach_the_provider(
    console: ScriptedConsole, scripted: ScriptedProvider, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 2)}")
    said = await console.say("/imagine model:scripted subject:ada Ada as an astronaut", "y")
    assert "Done: 1 image for 10 credits." in said
    [request] = scripted.requests
    assert [image.mime_type for image in request.reference_images] == ["image/png"] * 2
    assert len({image.data for image in request.reference_images}) == 2


async def test_a_subject_at_the_models_reference_limit_is_quoted(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 2)}")  # scripted takes 2
    said = await console.say("/imagine model:scripted subject:ada a portrait", "n")
    assert "Generate 1 image · 10 credits? [y/N] " in console.questions
    assert said.endswith(messages.CANCELLED)
    [quote] = await service.ledger.history(OWNER, limit=1, include_unconfirmed=True)
    assert quote.reference_count == 2


async def test_a_subject_past_the_models_reference_limit_is_one_sentence_and_nothing_recorded(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 3)}")
    said = await console.say("/imagine model:scripted subject:ada a portrait")
    assert said == messages.too_many_reference_images(3, "scripted", 2, "ada")
    assert await quotes_of(service) == 0


async def test_a_subject_on_a_model_without_references_is_one_sentence(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 1)}")
    said = await console.say("/imagine model:local-sketch subject:ada a portrait")
    assert said == messages.reference_images_not_accepted("local-sketch")
    assert await quotes_of(service) == 0


async def test_another_account_can_neither_see_nor_use_your_subject(
    console: ScriptedConsole, service: ImagineService, settings: Settings, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 1)}")
    guest = ScriptedConsole(service, GUEST, settings.output_dir)
    assert await guest.say("/subject list") == messages.NO_SUBJECTS
    said = await guest.say("/imagine model:scripted subject:ada a portrait")
    assert said == messages.no_such_subject("ada")
    assert await guest.say("/subject delete ada") == messages.no_such_subject("ada")
    assert await quotes_of(service, GUEST) == 0
    assert [subject.name for subject in await service.ledger.list_subjects(OWNER)] == ["ada"]


async def test_a_subject_on_compare_names_a_model_that_takes_no_references(
    console: ScriptedConsole, service: ImagineService, tmp_path: Path
) -> None:
    await console.say(f"/subject save ada {pictures(tmp_path, 1)}")

    said = await console.say("/compare models:scripted,local-sketch subject:ada Ada at sea")

    assert "local-sketch" in said
    assert console.questions == []
    assert await quotes_of(service) == 0


async def test_an_unknown_subject_on_compare_is_one_sentence_and_quotes_nothing(
    console: ScriptedConsole, service: ImagineService
) -> None:
    said = await console.say("/compare models:scripted,local-sketch subject:nobody a fox")

    assert said == messages.no_such_subject("nobody")
    assert await quotes_of(service) == 0
