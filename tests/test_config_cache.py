"""The `cache`, `workers` and new `idp` keys of the config, with key-path errors."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import CacheConfig, ConfigError, parse_config

from .support import ENV, gateway_document


def parse(**top: Any) -> Any:
    document = gateway_document(issuer="http://idp.test", upstream_url="http://up.test")
    document.update(top)
    return parse_config(document, source="t.yaml", env=ENV)


def test_cache_defaults_to_a_memory_cache() -> None:
    config = parse()
    assert config.cache == CacheConfig(backend="memory", ttl=60.0, negative_ttl=10.0, max_entries=100_000)
    assert config.workers == 1


def test_cache_section_is_read() -> None:
    config = parse(
        cache={"backend": "redis", "url": "redis://127.0.0.1:6379/0", "ttl_seconds": 30, "negative_ttl_seconds": 2},
        workers=2,
    )
    assert (config.cache.backend, config.cache.url, config.cache.ttl, config.cache.negative_ttl) == (
        "redis",
        "redis://127.0.0.1:6379/0",
        30.0,
        2.0,
    )
    assert config.workers == 2


@pytest.mark.parametrize(
    ("top", "problem"),
    [
        ({"cache": {"backend": "memcached"}}, "t.yaml: cache.backend: expected memory or redis"),
        ({"cache": {"backend": "redis"}}, "t.yaml: cache.url: is required with backend redis"),
        ({"cache": {"backend": "redis", "url": "http://x"}}, "t.yaml: cache.url: expected a redis://"),
        ({"cache": {"max_entries": 0}}, "t.yaml: cache.max_entries: expected a whole number from 1"),
        ({"cache": {"ttl_seconds": -1}}, "t.yaml: cache.ttl_seconds: expected a number >= 0"),
        ({"cache": {"size": 1}}, "t.yaml: cache.size: unknown key"),
        ({"workers": 0}, "t.yaml: workers: expected a whole number from 1 to 256"),
    ],
)
def test_cache_problems_name_their_key(top: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(**top)
    assert any(p.startswith(problem) for p in error.value.problems), error.value.problems
