"""The API's per-token rate limit (api/auth.py RateLimit): counted in its store, or in this
process while the store is down."""

from __future__ import annotations

import logging

import pytest

from saga.api.auth import RateLimit
from saga.settings import Settings
from tests.conftest import BROKERS, need

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


def rate_limit(rate: str, storage: str) -> RateLimit:
    return RateLimit(Settings(database_url="sqlite://", broker_url="memory://",
                              rate_limit=rate, rate_limit_storage=storage))


def test_every_window_counts_and_the_wait_is_until_the_broken_one_starts_again():
    limit = rate_limit("3/minute;100/hour", "memory://")
    assert [limit.wait_s("saga", "q", "ci") for _ in range(3)] == [None] * 3
    wait = limit.wait_s("saga", "q", "ci")
    assert wait is not None and 0 < wait <= 60
    assert limit.wait_s("saga", "q", "other") is None  # another token counts apart


def test_tokens_share_the_count_of_a_redis_store_across_processes():
    need("redis", BROKERS["redis"])
    storage = BROKERS["redis"].rsplit("/", 1)[0] + "/1"
    first, second = rate_limit("2/minute", storage), rate_limit("2/minute", storage)
    key = ("saga", "test-queue", f"ci-{id(first)}")
    assert (first.wait_s(*key), second.wait_s(*key)) == (None, None)
    assert first.wait_s(*key) is not None and second.wait_s(*key) is not None


def test_a_store_that_fails_is_replaced_by_this_process_memory_and_said_once(caplog):
    limit = rate_limit("2/minute", CLOSED)
    with caplog.at_level(logging.WARNING, logger="saga.api.auth"):
        answers = [limit.wait_s("saga", "q", "ci") for _ in range(3)]
    assert answers[:2] == [None, None] and answers[2] is not None
    said = [r for r in caplog.records if "rate limit's store failed" in r.getMessage()]
    assert len(said) == 1  # then it counts in memory for STORE_RETRY_S without asking


@pytest.mark.parametrize("rate", ["", "fast", "10/fortnight"])
def test_a_bad_rate_is_refused_naming_the_setting(rate):
    with pytest.raises(ValueError, match="SAGA_RATE_LIMIT"):
        rate_limit(rate, "memory://")
