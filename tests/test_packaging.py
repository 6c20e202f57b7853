"""The container files: the image copies only what `.dockerignore` lets in, its health check reads the port from
the settings, and the compose stack pins every image it pulls."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_image_copies_files_that_exist_and_that_dockerignore_lets_in() -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    copied = [
        source
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source


def test_dependencies_are_installed_in_a_layer_before_the_code() -> None:
    assert DOCKERFILE.index("-r requirements.txt") < DOCKERFILE.index("COPY router")


def test_the_health_check_reads_the_port_from_the_settings() -> None:
    [check] = [line for line in DOCKERFILE.splitlines() if line.startswith("HEALTHCHECK")]
    assert '"hybrid-router", "healthcheck"' in check
    assert not re.search(r"\d{4}", check.split("CMD", 1)[1])  # no port written into it


def test_the_image_serves_on_the_port_compose_publishes_and_prometheus_scrapes() -> None:
    assert "HYBRID_ROUTER_HOST=0.0.0.0 HYBRID_ROUTER_PORT=8080" in DOCKERFILE
    router = yaml.safe_load((ROOT / "config" / "docker-compose.yml").read_text())["services"]["router"]
    assert router["ports"] == ["127.0.0.1:8080:8080"]
    scraped = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scraped["static_configs"][0]["targets"] == ["router:8080"]


def test_compose_pins_every_image() -> None:
    services = yaml.safe_load((ROOT / "config" / "docker-compose.yml").read_text())["services"]
    images = {name: service["image"] for name, service in services.items() if "image" in service}
    assert images
    unpinned = {name: image for name, image in images.items() if not re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", image)}
    assert unpinned == {}
