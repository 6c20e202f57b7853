"""Reading the router's Prometheus text exposition in tests."""

from __future__ import annotations


def series(text: str, name: str, label: str = "") -> dict[str, float]:
    """The series of metric `name` whose labels contain `label`, by their full name with labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ " and label in line:
            full, value = line.rsplit(" ", 1)
            out[full] = float(value)
    return out


def metric(text: str, full_name: str) -> float:
    """The value of one series given by its full name with labels (`name{a="b"}`); 0 when it is not there yet."""
    for line in text.splitlines():
        if line.startswith(full_name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
