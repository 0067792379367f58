"""Reading the service's Prometheus metrics in tests."""

from __future__ import annotations

import asyncio
import re
import urllib.request

from credits_service.app import Application

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples = {}
    for line in body.decode().splitlines():
        if match := SAMPLE.match(line):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


async def scrape(app: Application) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    assert app.metrics_port is not None
    return await asyncio.to_thread(_scrape, app.metrics_port)


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
