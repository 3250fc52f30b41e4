"""What ships: the Docker build context, the Dockerfile's rules, `.env.example` against the
settings, and the sharded deployment files (Compose, Kubernetes).

Docker and Kubernetes do not run on these machines, so the image and the manifests are
checked by reading the files the way Docker and Kubernetes would, not by running them.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
SHARDED_COMPOSE = REPO / "deploy" / "compose.sharded.yaml"
STATEFULSET = REPO / "deploy" / "kubernetes" / "statefulset.yaml"
SHUTDOWN_GRACE_SECONDS = Settings.model_fields["shutdown_grace_seconds"].default
METRICS_PORT = int(re.findall(r"METRICS_PORT=(\d+)", DOCKERFILE)[0])
"""Where the image serves /livez and /readyz."""


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


def seconds(duration: str) -> float:
    """A Compose duration such as ``45s`` or ``1m30s``, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_the_sharded_compose_file_runs_shards_0_and_1_of_2_on_one_postgresql() -> None:
    services = yaml.safe_load(SHARDED_COMPOSE.read_text())["services"]
    bots = {name: service for name, service in services.items() if name.startswith("bot")}

    assert sorted(bots) == ["bot-0", "bot-1"]
    shards = {name: bot["environment"]["DISCORD_SHARD_IDS"] for name, bot in bots.items()}
    assert shards == {"bot-0": "0", "bot-1": "1"}
    assert {bot["environment"]["DISCORD_SHARD_COUNT"] for bot in bots.values()} == {"2"}
    assert {bot["environment"]["DATABASE_URL"].split("@")[1] for bot in bots.values()} == {
        "db:5432/imagine"
    }
    for bot in bots.values():
        assert bot["depends_on"]["db"]["condition"] == "service_healthy"
        assert seconds(bot["stop_grace_period"]) > SHUTDOWN_GRACE_SECONDS
        # Paths are the compose file's own: the repository's root and its .env.
        assert (SHARDED_COMPOSE.parent / bot["build"] / "Dockerfile").is_file()
        assert (SHARDED_COMPOSE.parent / bot["env_file"]).resolve() == REPO / ".env"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])


def test_only_the_first_shard_takes_web_traffic_and_slack() -> None:
    services = yaml.safe_load(SHARDED_COMPOSE.read_text())["services"]

    published = {
        name: [port.split(":")[-1] for port in service.get("ports", [])]
        for name, service in services.items()
    }
    assert [name for name, ports in published.items() if "3000" in ports] == ["bot-0"]
    # Empty is unset (the settings ignore empty variables): Slack is bot-0's alone.
    assert services["bot-1"]["environment"]["SLACK_BOT_TOKEN"] == ""
    assert services["bot-1"]["environment"]["SLACK_APP_TOKEN"] == ""


def statefulset_manifests() -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in yaml.safe_load_all(STATEFULSET.read_text())}


def test_the_statefulset_gives_each_pod_its_own_shard_of_as_many_as_there_are_pods() -> None:
    statefulset = statefulset_manifests()["StatefulSet"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    env = container["env"]
    names = [variable["name"] for variable in env]
    by_name = {variable["name"]: variable for variable in env}

    assert by_name["DISCORD_SHARD_COUNT"]["value"] == str(statefulset["spec"]["replicas"])
    pod_index = by_name["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod_index == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert by_name["DISCORD_SHARD_IDS"]["value"] == "$(POD_INDEX)"
    # Kubernetes expands $(NAME) only from variables defined earlier in the list.
    assert names.index("POD_INDEX") < names.index("DISCORD_SHARD_IDS")
    assert by_name["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL"
    assert "value" not in by_name["DISCORD_TOKEN"]


def test_the_statefulset_stops_gracefully_and_probes_the_health_port() -> None:
    manifests = statefulset_manifests()
    statefulset, service = manifests["StatefulSet"], manifests["Service"]
    pod = statefulset["spec"]["template"]
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]

    assert pod["spec"]["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS
    assert port["containerPort"] == METRICS_PORT
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
