"""Failover with a fresh quote, through the console on both databases.

A provider's circuit opens after it failed its last CIRCUIT_FAILURES generations
and lets one trial through after the cool-down (the clock is the test's); a quote
for a model that cannot be used now (circuit open, no key) names the cause and
offers the cheapest model of another provider that takes the request as asked,
as a real quote whose click is the ordinary confirm.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot import messages
from bot.app import open_service
from bot.circuits import CircuitState, Health
from bot.errors import AlreadyHandled, ModelUnusable, ProviderCircuitOpen
from bot.flow import ImagineService, Quote
from bot.parsing import ImagineOptions, parse_imagine, validate_request
from bot.settings import Settings
from ledger import Balance, GenerationStatus
from providers.base import ReferenceImage
from providers.errors import ContentBlocked, ProviderUnavailable
from tests.conftest import FakeClock
from tests.fakes import Script, ScriptedProvider, tiny_png
from tests.test_console_flow import OWNER, RecordingDelivery, ScriptedConsole, available

FAILURES = 3
COOLDOWN_SECONDS = 60

# Sketch Pro comes before Sketch, so a tie between them goes to Sketch Pro.
MODELS = """
[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K", "2K", "4K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
max_reference_images = 2

[models.sketch-pro]
provider = "local"
provider_model = "procedural-v1"
name = "Sketch Pro"
credits_per_image = 6
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
max_reference_images = 2

[models.sketch]
provider = "local"
provider_model = "procedural-v1"
name = "Sketch"
credits_per_image = 4
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
max_reference_images = 2

[models.keyless]
provider = "openai"
provider_model = "gpt-image-1.5"
name = "Keyless"
credits_per_image = 8
resolutions = ["1K"]
aspect_ratios = ["1:1"]
max_images = 4
"""

# For the alternative's fit: one cheap model that lacks one thing the request asks for.
CAPABLE = """
[models.scripted]
provider = "scripted"
provider_model = "scripted-v1"
name = "Scripted"
credits_per_image = 10
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
max_reference_images = 2

[models.capable]
provider = "local"
provider_model = "procedural-v1"
name = "Capable"
credits_per_image = 6
resolutions = ["1K", "2K"]
aspect_ratios = ["1:1", "16:9"]
max_images = 4
max_reference_images = 2
"""
LACKING = """
[models.lacking]
provider = "local"
provider_model = "procedural-v1"
name = "Lacking"
credits_per_image = 1
resolutions = {resolutions}
aspect_ratios = {aspect_ratios}
max_images = {max_images}
max_reference_images = {max_reference_images}
"""
EVERYTHING = {
    "resolutions": '["1K", "2K"]',
    "aspect_ratios": '["1:1", "16:9"]',
    "max_images": 4,
    "max_reference_images": 2,
}


def settings_for(database_url: str, tmp_path: Path, models: str) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(models)
    return Settings(
        _env_file=None,
        database_url=database_url,
        models_file=models_file,
        output_dir=tmp_path / "out",
        generation_timeout_seconds=5,
        circuit_failures=FAILURES,
        circuit_cooldown_seconds=COOLDOWN_SECONDS,
    )


@pytest.fixture
async def service(
    database_url: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[ImagineService]:
    settings = settings_for(database_url, tmp_path, MODELS)
    async with open_service(settings, extra_admins=frozenset({OWNER}), clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        yield service


@pytest.fixture
def scripted(service: ImagineService) -> ScriptedProvider:
    provider = service.providers.providers["scripted"]
    assert isinstance(provider, ScriptedProvider)
    return provider


@pytest.fixture
def console(service: ImagineService, tmp_path: Path) -> ScriptedConsole:
    return ScriptedConsole(service, OWNER, tmp_path / "out")


async def fail_generations(
    console: ScriptedConsole, scripted: ScriptedProvider, times: int = FAILURES
) -> None:
    """``times`` generations of Scripted that find its provider down."""
    scripted.script = Script(images=0, error=ProviderUnavailable("503"))
    for _ in range(times):
        said = await console.say("/imagine model:scripted a fox", "y")
        assert messages.failure("unavailable", "503") in said
    scripted.script = Script()


async def offered(service: ImagineService, text: str = "model:scripted a fox") -> ModelUnusable:
    """The refusal of a quote for ``text``, which must carry an alternative."""
    with pytest.raises(ModelUnusable) as refused:
        await service.quote(OWNER, parse_imagine(text, service.catalog))
    assert refused.value.alternative is not None
    return refused.value


def alternative(refusal: ModelUnusable) -> Quote:
    assert refusal.alternative is not None
    return refusal.alternative


# -- the circuit ----------------------------------------------------------------


async def test_the_circuit_opens_when_the_provider_failed_its_last_n_generations(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted, FAILURES - 1)
    assert service.circuits.state("scripted").state == CircuitState.CLOSED

    await fail_generations(console, scripted, 1)

    circuit = service.circuits.state("scripted")
    assert (circuit.state, circuit.failures, circuit.last_error) == (
        CircuitState.OPEN,
        FAILURES,
        "unavailable",
    )


async def test_a_generation_the_provider_answered_with_a_block_starts_the_count_again(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted, FAILURES - 1)
    scripted.script = Script(images=0, error=ContentBlocked("unsafe"))
    await console.say("/imagine model:scripted a fox", "y")

    await fail_generations(console, scripted, 1)

    circuit = service.circuits.state("scripted")
    assert (circuit.state, circuit.failures) == (CircuitState.CLOSED, 1)


async def test_every_provider_s_circuit_is_readable_for_the_dashboard(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted)

    states = service.circuits.states()

    assert [(view.provider, view.state) for view in states] == [
        ("local", CircuitState.CLOSED),
        ("scripted", CircuitState.OPEN),
    ]
    assert states[1].opened_at is not None
    assert states[1].retry_at == states[1].opened_at + service.circuits.cooldown


async def test_a_quote_while_the_circuit_is_open_names_the_cause_and_offers_the_cheapest_alternative(
    console: ScriptedConsole, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted)

    said = await console.say("/imagine model:scripted a fox", "n")

    assert said.startswith(
        "Scripted is unavailable right now: its provider failed its last 3 requests"
        " · Try Sketch · 4 credits\n"
        "Sketch · 1 image · 1K · 1:1\nPrice: 4 credits · your balance: 100 credits"
    )
    assert console.questions[-1] == "Try Sketch for 4 credits? [y/N] "


async def test_after_the_cool_down_one_quote_is_let_through_as_the_trial(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider, clock: FakeClock
) -> None:
    await fail_generations(console, scripted)
    clock.advance(seconds=COOLDOWN_SECONDS)

    trial = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    after_it = await offered(service)

    assert trial.request.model.id == "scripted"
    assert isinstance(after_it, ProviderCircuitOpen)
    assert service.circuits.state("scripted").state == CircuitState.HALF_OPEN


async def test_a_trial_the_provider_answers_closes_the_circuit(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider, clock: FakeClock
) -> None:
    await fail_generations(console, scripted)
    clock.advance(seconds=COOLDOWN_SECONDS)

    said = await console.say("/imagine model:scripted a fox", "y")

    assert "Done: 1 image for 10 credits." in said
    circuit = service.circuits.state("scripted")
    assert (circuit.state, circuit.failures) == (CircuitState.CLOSED, 0)
    quote = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))
    assert quote.request.model.id == "scripted"


async def test_a_trial_that_finds_the_provider_down_opens_it_for_another_cool_down(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider, clock: FakeClock
) -> None:
    await fail_generations(console, scripted)
    clock.advance(seconds=COOLDOWN_SECONDS)

    await fail_generations(console, scripted, 1)
    clock.advance(seconds=COOLDOWN_SECONDS - 1)

    assert isinstance(await offered(service), ProviderCircuitOpen)
    assert service.circuits.state("scripted").state == CircuitState.OPEN


async def test_a_trial_never_confirmed_lapses_after_a_cool_down(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider, clock: FakeClock
) -> None:
    await fail_generations(console, scripted)
    clock.advance(seconds=COOLDOWN_SECONDS)
    await console.say("/imagine model:scripted a fox", "n")
    clock.advance(seconds=COOLDOWN_SECONDS)

    trial = await service.quote(OWNER, parse_imagine("model:scripted a fox", service.catalog))

    assert trial.request.model.id == "scripted"


# -- other causes -----------------------------------------------------------------


async def test_a_model_whose_provider_has_no_key_offers_an_alternative(
    console: ScriptedConsole,
) -> None:
    said = await console.say("/imagine model:keyless a fox", "n")

    assert said.startswith(
        "Keyless is unavailable right now: no API key is configured (set OPENAI_API_KEY)"
        " · Try Sketch · 4 credits\n"
    )


# -- which alternative ------------------------------------------------------------


@pytest.mark.parametrize(
    "lacks",
    [
        {"resolutions": '["1K"]'},
        {"aspect_ratios": '["1:1"]'},
        {"max_images": 2},
        {"max_reference_images": 0},
    ],
    ids=["resolution", "aspect ratio", "max images", "reference images"],
)
async def test_the_alternative_is_never_a_model_that_cannot_make_the_request_as_asked(
    database_url: str, tmp_path: Path, clock: FakeClock, lacks: dict[str, object]
) -> None:
    lacking = LACKING.format(**(EVERYTHING | lacks))
    settings = settings_for(database_url, tmp_path, CAPABLE + lacking)
    async with open_service(settings, clock=clock) as service:
        await service.credits.open_account(OWNER, welcome_credits=100)
        service.catalog = replace(service.catalog, unavailable={"scripted": "it is down"})
        request = validate_request(
            ImagineOptions(
                prompt="a fox",
                model="scripted",
                count=3,
                resolution="2K",
                aspect="16:9",
                reference_images=(ReferenceImage(tiny_png(), "image/png"),),
            ),
            service.catalog,
        )

        with pytest.raises(ModelUnusable) as refused:
            await service.quote(OWNER, request)

    assert alternative(refused.value).request.model.id == "capable"


async def test_the_alternative_is_never_of_a_provider_whose_circuit_is_not_closed(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    for _ in range(FAILURES):
        service.circuits.record("local", Health.DOWN, "unavailable")
    await fail_generations(console, scripted)

    said = await console.say("/imagine model:scripted a fox")

    assert said == messages.circuit_open("Scripted", FAILURES)


async def test_with_no_model_that_can_make_the_request_the_cause_alone_and_nothing_recorded(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted)
    before = await service.ledger.history(OWNER, include_unconfirmed=True)
    asked = len(console.questions)

    said = await console.say("/imagine model:scripted res:4K a fox")

    assert said == messages.circuit_open("Scripted", FAILURES)
    assert len(console.questions) == asked
    assert await service.ledger.history(OWNER, include_unconfirmed=True) == before


async def test_the_alternative_is_the_cheapest_at_the_account_s_own_price(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await console.say("/price set console:local sketch-pro 2 a friend")
    await fail_generations(console, scripted)

    refusal = await offered(service, "model:scripted count:2 a fox")

    quote = alternative(refusal)
    assert (quote.request.model.id, quote.price) == ("sketch-pro", 4)
    assert "· Try Sketch Pro · 4 credits\n" in refusal.message
    assert "Your price 2 per image, list 6." in refusal.message


async def test_a_tie_in_price_goes_to_the_model_listed_first(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await console.say("/price set console:local sketch-pro 4 a friend")
    await fail_generations(console, scripted)

    quote = alternative(await offered(service))

    assert (quote.request.model.id, quote.price) == ("sketch-pro", 4)


async def test_an_alternative_the_balance_cannot_pay_is_named_with_the_shortfall_and_no_question(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted)
    await service.credits.revoke(OWNER, OWNER, 97)
    asked = len(console.questions)

    said = await console.say("/imagine model:scripted a fox")

    assert said == messages.alternative_refused(
        "Scripted",
        messages.circuit_open_reason(FAILURES),
        "Sketch",
        messages.insufficient_credits(4, 3),
    )
    assert len(console.questions) == asked


# -- the click --------------------------------------------------------------------


async def test_clicking_the_alternative_charges_its_price_and_generates_with_it(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted)
    calls_before = len(scripted.requests)

    said = await console.say("/imagine model:scripted count:2 a fox", "y")

    assert "Done: 2 images for 8 credits." in said
    [generation] = await service.ledger.history(OWNER, limit=1)
    assert (generation.model_id, generation.status, generation.credits_charged) == (
        "sketch",
        GenerationStatus.COMPLETED,
        8,
    )
    assert generation.options["instead_of"] == "scripted"
    assert await available(service) == 92
    assert len(scripted.requests) == calls_before


async def test_an_alternative_not_clicked_changes_nothing(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider, clock: FakeClock
) -> None:
    await fail_generations(console, scripted)

    quote = alternative(await offered(service))
    clock.advance(seconds=service.quote_ttl.total_seconds() + 1)
    await service.recover()

    assert (await service.ledger.generation(quote.id)).status == GenerationStatus.EXPIRED
    assert await service.credits.balance(OWNER) == Balance(OWNER, available=100, held=0)
    assert len(scripted.requests) == FAILURES


async def test_the_alternative_s_click_is_the_ordinary_confirm_once_only(
    console: ScriptedConsole, service: ImagineService, scripted: ScriptedProvider
) -> None:
    await fail_generations(console, scripted)
    quote = alternative(await offered(service))

    await service.confirm(quote.id, OWNER, RecordingDelivery())

    with pytest.raises(AlreadyHandled):
        await service.confirm(quote.id, OWNER, RecordingDelivery())
    assert await available(service) == 96
