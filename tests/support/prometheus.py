"""Reading a service's Prometheus ``/metrics`` in tests: every sample by (name, labels)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: (metric name, its labels) -> value.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str, *, drop: tuple[str, ...] = ()) -> Samples:
    """Every sample ``http://address/metrics`` serves, without OTel scope labels and ``drop``."""
    text = httpx.get(f"http://{address}/metrics", timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v)
                for k, v in sample.labels.items()
                if not k.startswith("otel_scope") and k not in drop
            )
            samples[(sample.name, labels)] = sample.value
    return samples
