"""What ships: the Docker build context, the Dockerfile's rules, and `.env.example` against the settings.

Docker does not run on these machines, so the image is checked by reading the
files the way Docker would, not by building it.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from bot.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()


def ignored_by_docker(path: str) -> bool:
    """``.dockerignore`` as Docker applies it: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = [pattern]
        if pattern.startswith("**/"):
            candidates.append(pattern.removeprefix("**/"))
        parts = path.split("/")
        prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
        if any(
            fnmatch.fnmatch(prefix, candidate) for prefix in prefixes for candidate in candidates
        ):
            ignored = not negated
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "imagine.db",
        "data/imagine.db-wal",
        "imagine-out/abc-1.png",
        ".venv/bin/python",
        ".git/config",
        "bot/__pycache__/flow.cpython-311.pyc",
    ],
)
def test_secrets_local_databases_and_clutter_stay_out_of_the_build_context(path: str) -> None:
    assert ignored_by_docker(path)


@pytest.mark.parametrize(
    "path", [".env.example", "pyproject.toml", "bot/flow.py", "config/models.toml"]
)
def test_what_the_image_needs_is_in_the_build_context(path: str) -> None:
    assert not ignored_by_docker(path)


def test_the_base_image_is_pinned_to_a_patch_release() -> None:
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)

    assert bases
    assert all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base) for base in bases)


def test_the_bot_runs_as_an_unprivileged_user() -> None:
    users = re.findall(r"^USER (\S+)", DOCKERFILE, flags=re.MULTILINE)

    assert users and users[-1] not in ("root", "0")


def test_no_secret_is_baked_into_a_layer() -> None:
    assignments = re.findall(
        r"(\w+)=", " ".join(re.findall(r"^ENV (?:.*\\\n)*.*", DOCKERFILE, re.M))
    )

    assert "METRICS_PORT" in assignments, "every line of a continued ENV is read"
    assert not [name for name in assignments if re.search("TOKEN|KEY|SECRET|PASSWORD", name)]
    assert ".env" not in " ".join(re.findall(r"^COPY .*", DOCKERFILE, flags=re.MULTILINE))


def test_the_image_checks_its_health_and_runs_the_bot() -> None:
    assert "HEALTHCHECK" in DOCKERFILE
    [healthcheck] = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", DOCKERFILE, re.MULTILINE)
    assert "CMD [" in healthcheck
    assert "/livez" in healthcheck
    assert 'ENTRYPOINT ["imagine-bot"]' in DOCKERFILE
    assert 'CMD ["run"]' in DOCKERFILE


def test_env_example_lists_every_setting() -> None:
    listed = set(re.findall(r"^([A-Z_]+)=", (REPO / ".env.example").read_text(), re.MULTILINE))

    assert {name.upper() for name in Settings.model_fields} <= listed


def test_env_example_is_a_valid_configuration() -> None:
    settings = Settings(_env_file=REPO / ".env.example")  # type: ignore[call-arg]

    assert settings.user_concurrency == 2
    assert settings.discord_token is None
