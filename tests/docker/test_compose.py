"""docker/compose.yaml: valid against the compose spec, and wired the way docs/deployment.md says.

`docker compose config` validates the files and resolves them (defaults, anchors, the CPU
override's `!reset`); the checks below read that resolved model, as Docker would run it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server.settings import Settings
from tests.docker.tools import (
    COMPOSE,
    COMPOSE_CPU,
    COMPOSE_SCALE,
    DOCKER,
    GRAFANA,
    PROMETHEUS_CONFIG,
    REPO,
    REQUIRED_VARIABLES,
    compose_config,
    compose_config_refusal,
)


@pytest.fixture(scope="module")
def gpu() -> dict:
    return compose_config(COMPOSE)["services"]


@pytest.fixture(scope="module")
def cpu() -> dict:
    return compose_config(COMPOSE, COMPOSE_CPU)["services"]


def gpu_devices(service: dict) -> list[dict]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [device for device in reservations.get("devices", []) if "gpu" in device["capabilities"]]


def mount(service: dict, target: str) -> dict:
    mounts = [volume for volume in service["volumes"] if volume["target"] == target]
    assert mounts, f"nothing is mounted at {target}: {service['volumes']}"
    return mounts[0]


def test_the_server_and_training_reserve_the_gpu(gpu):
    for name in ("server", "train"):
        assert gpu_devices(gpu[name]), f"{name} has no GPU reservation"
        assert gpu[name]["build"]["args"]["VARIANT"] == "gpu"


def test_the_cpu_override_drops_the_gpu_and_builds_the_cpu_image(cpu):
    for name in ("server", "train"):
        assert not gpu_devices(cpu[name]), f"{name} still reserves a GPU on CPU hosts"
        assert cpu[name]["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["server"]["environment"]["BACKTRACK_DEVICE"] == "cpu"


def test_the_server_serves_a_read_only_checkpoint_from_models(gpu):
    server = gpu["server"]
    models = mount(server, "/models")
    assert models["read_only"]
    assert server["environment"]["BACKTRACK_CHECKPOINT"] == "/models/default"


def test_training_writes_where_the_server_reads(gpu):
    """`compose run train` then `compose up` serves the model just trained, with no copying."""
    written = mount(gpu["train"], "/app/checkpoints")["source"]
    assert written == mount(gpu["server"], "/models")["source"]
    assert Path(written) == (DOCKER / ".." / "checkpoints").resolve()  # where `make train` writes
    assert gpu["train"]["command"] == ["train"]
    assert gpu["train"]["profiles"] == ["train"]  # `compose up` never starts a training run


def test_the_server_is_published_and_health_checked(gpu):
    server = gpu["server"]
    port = int(server["environment"]["BACKTRACK_PORT"])
    assert [p["target"] for p in server["ports"]] == [port]
    assert server["environment"]["BACKTRACK_HOST"] == "0.0.0.0"
    assert server["healthcheck"]["test"] == ["CMD", "python", "/app/docker/healthcheck.py"]


def test_docker_stop_lets_in_flight_requests_finish(gpu):
    """Docker kills after stop_grace_period; the server drains for shutdown_timeout + 5 s."""
    drain = Settings.model_fields["shutdown_timeout"].default + 5
    assert seconds(gpu["server"]["stop_grace_period"]) > drain


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `45s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


def test_the_api_key_is_passed_through_only_when_set(gpu):
    """An empty BACKTRACK_API_KEY would mean 'no key' or 'empty key'; unset is unambiguous."""
    assert gpu["server"]["environment"]["BACKTRACK_API_KEY"] is None


def test_prometheus_reads_the_config_in_this_directory(gpu):
    config = mount(gpu["prometheus"], "/etc/prometheus/prometheus.yml")
    assert Path(config["source"]) == PROMETHEUS_CONFIG
    assert "--config.file=/etc/prometheus/prometheus.yml" in gpu["prometheus"]["command"]


def test_grafana_is_provisioned_with_the_datasource_and_dashboards(gpu):
    grafana = gpu["grafana"]
    assert Path(mount(grafana, "/etc/grafana/provisioning")["source"]) == GRAFANA / "provisioning"
    dashboards = mount(grafana, "/etc/grafana/dashboards")
    assert Path(dashboards["source"]) == GRAFANA / "dashboards"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning/dashboards/backtrack-serving.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == dashboards["target"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    assert home.startswith(dashboards["target"] + "/")


def test_images_are_pinned(gpu):
    for name in ("prometheus", "grafana"):
        image = gpu[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image


def nginx_directives(text: str) -> list[list[str]]:
    """Each `name arg ...;` directive of an nginx config, comments dropped."""
    text = re.sub(r"#[^\n]*", "", text)
    return [statement.split() for statement in re.split(r"[;{}]", text) if statement.strip()]


def test_replicas_sit_behind_a_load_balancer_on_the_server_port(gpu):
    """`--scale server=N` needs the replicas unpublished and the balancer on the usual port."""
    scaled = compose_config(COMPOSE, COMPOSE_SCALE)["services"]
    assert not scaled["server"].get("ports")
    assert [p["published"] for p in scaled["lb"]["ports"]] == [
        p["published"] for p in gpu["server"]["ports"]
    ]
    assert scaled["lb"]["depends_on"]["server"]["condition"] == "service_healthy"
    config = mount(scaled["lb"], "/etc/nginx/nginx.conf")["source"]
    directives = nginx_directives(Path(config).read_text())
    port = gpu["server"]["environment"]["BACKTRACK_PORT"]
    assert ["server", f"server:{port}", "resolve"] in directives  # every replica of `server`
    assert ["listen", port] in directives
    assert ["proxy_buffering", "off"] in directives  # SSE events reach the client one by one


NGINX_DEFAULT_BODY_LIMIT = "1m"
"""nginx's client_max_body_size where the config sets none."""


def nginx_size(value: str) -> int:
    """An nginx size (`2000000`, `512k`, `2m`, `1g`) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value}"
    number, unit = match.groups()
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


def test_the_load_balancer_admits_exactly_the_bodies_the_server_admits(gpu):
    """Below the server's limit nginx would refuse (in HTML) what the server accepts; above it,
    nginx would buffer bodies the server then refuses."""
    scaled = compose_config(COMPOSE, COMPOSE_SCALE)["services"]
    config = Path(mount(scaled["lb"], "/etc/nginx/nginx.conf")["source"]).read_text()
    sizes = [d[1] for d in nginx_directives(config) if d[0] == "client_max_body_size"]
    assert len(sizes) <= 1, sizes  # one limit for the one proxied location
    server_limit = int(
        scaled["server"]["environment"].get(
            "BACKTRACK_MAX_REQUEST_BYTES", Settings.model_fields["max_request_bytes"].default
        )
    )
    assert nginx_size((sizes or [NGINX_DEFAULT_BODY_LIMIT])[0]) == server_limit


def test_the_nginx_size_reader_reads_nginx_units():
    assert [nginx_size(v) for v in ("2000000", "1m", "512k", "1G")] == [
        2_000_000,
        1_048_576,
        524_288,
        1_073_741_824,
    ]


def test_the_documented_recipe_pins_a_replica_to_one_gpu(tmp_path):
    """docs/deployment.md's one-replica-per-GPU file resolves to a `server` replica on GPU 1 only."""
    readme = (REPO / "docs" / "deployment.md").read_text()
    (recipe,) = [
        block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "device_ids" in block
    ]
    path = tmp_path / "compose.gpu1.yaml"
    path.write_text(recipe.replace("file: compose.yaml", f"file: {COMPOSE}"))
    services = compose_config(COMPOSE, COMPOSE_SCALE, path)["services"]
    replica = services["server-gpu1"]
    assert gpu_devices(replica) == [
        {"capabilities": ["gpu"], "driver": "nvidia", "device_ids": ["1"]}
    ]
    assert "server" in replica["networks"]["default"]["aliases"]
    assert not replica.get("ports")
    assert replica["environment"] == services["server"]["environment"]


def test_every_port_is_published_on_loopback_by_default(gpu):
    """Safe by default on a GPU host: nothing is reachable from outside until asked for."""
    published = [port for service in gpu.values() for port in service.get("ports", [])]
    assert published and all(port["host_ip"] == "127.0.0.1" for port in published)
    assert gpu["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


@pytest.mark.parametrize("unset", [{}, {"GRAFANA_ADMIN_PASSWORD": ""}], ids=["unset", "empty"])
def test_compose_refuses_to_start_grafana_without_a_chosen_admin_password(unset):
    """No `admin` default: an unset or empty password stops `docker compose` with its name."""
    for files in ((COMPOSE,), (COMPOSE, COMPOSE_CPU), (COMPOSE, COMPOSE_SCALE)):
        refusal = compose_config_refusal(*files, variables=unset)
        assert "GRAFANA_ADMIN_PASSWORD" in refusal and "docker/.env" in refusal, refusal


def test_grafana_gets_the_admin_password_the_user_chose(gpu):
    chosen = REQUIRED_VARIABLES["GRAFANA_ADMIN_PASSWORD"]
    assert gpu["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == chosen


def host_addresses(services: dict) -> dict[str, set[str]]:
    return {
        name: {port["host_ip"] for port in service.get("ports", [])}
        for name, service in services.items()
        if service.get("ports")
    }


@pytest.mark.parametrize(
    ("variable", "published"),
    [
        ("BACKTRACK_PUBLISH_ADDRESS", {"server", "lb"}),
        ("PROMETHEUS_PUBLISH_ADDRESS", {"prometheus"}),  # no authentication at all
        ("GRAFANA_PUBLISH_ADDRESS", {"grafana"}),
    ],
)
def test_each_service_is_published_beyond_loopback_only_by_its_own_variable(variable, published):
    """Exposing the server (with its API key) must not expose Prometheus and Grafana too."""
    variables = {**REQUIRED_VARIABLES, variable: "0.0.0.0"}
    for files in ((COMPOSE,), (COMPOSE, COMPOSE_SCALE)):
        addresses = host_addresses(compose_config(*files, variables=variables)["services"])
        exposed = {name for name, hosts in addresses.items() if hosts != {"127.0.0.1"}}
        assert exposed == published & addresses.keys(), (files, addresses)
        assert all(addresses[name] == {"0.0.0.0"} for name in exposed)
