"""The one retry policy: Retry-After forms, temporary statuses, bounded attempts, the delays, the
observers' hook."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from containerdisks import oci, retry
from containerdisks.metrics import Metrics
from containerdisks.retry import RetryEvent, RetryPolicy


def test_retry_after_in_seconds() -> None:
    assert retry.parse_retry_after("120") == 120.0
    assert retry.parse_retry_after(" 7 ") == 7.0


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    seconds = retry.parse_retry_after(later)
    assert seconds is not None
    assert 80 <= seconds <= 90
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry.parse_retry_after(past) == 0.0


@pytest.mark.parametrize("garbage", [None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2024"])
def test_retry_after_garbage_is_ignored(garbage: str | None) -> None:
    assert retry.parse_retry_after(garbage) is None


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_temporary_statuses(status: int) -> None:
    assert retry.temporary_status(status)


@pytest.mark.parametrize("status", [None, 200, 301, 400, 401, 403, 404, 405, 409, 501, 505])
def test_other_statuses_are_not_temporary(status: int | None) -> None:
    assert not retry.temporary_status(status)


def test_the_oci_client_and_the_policy_agree_on_temporary_statuses() -> None:
    for status in (400, 404, 408, 429, 500, 501, 503):
        error = oci.errors.error_from_response("GET x", status=status, body=b"")
        assert error.temporary == retry.temporary_status(status), status
        assert retry.is_temporary(error) == retry.temporary_status(status), status


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    assert [retry.backoff(a, base=0.5, cap=3.0) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry.backoff(2, base=1.0, jitter=0.5, rand=lambda: 0.0) == 2.0
    assert retry.backoff(2, base=1.0, jitter=0.5, rand=lambda: 1.0) == 4.0
    assert retry.backoff(2, base=1.0, jitter=0.25, rand=lambda: 0.0) == 3.0


def test_a_server_retry_after_wins_but_is_capped() -> None:
    policy = RetryPolicy(max_delay=10.0, rand=lambda: 0.0)
    assert policy.delay(0, 3.0) == 3.0
    assert policy.delay(0, 3600.0) == 10.0
    assert policy.delay(3) == 2.0  # 0.5 * 8 = 4, jittered down to half


class FlakyError(Exception):
    temporary = True

    def __init__(self, n: int, retry_after: float | None = None) -> None:
        super().__init__(f"failure {n}")
        self.retry_after = retry_after


class FatalError(Exception):
    pass


def _policy(attempts: int, slept: list[float]) -> RetryPolicy:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return RetryPolicy(attempts=attempts, base_delay=1.0, max_delay=5.0, jitter=0.0, sleep=sleep)


def test_attempts_are_bounded_and_the_last_error_propagates() -> None:
    calls: list[int] = []
    slept: list[float] = []

    async def always() -> None:
        calls.append(1)
        raise FlakyError(len(calls))

    with pytest.raises(FlakyError, match="failure 3"):
        asyncio.run(retry.retrying("x", always, _policy(3, slept), kind="registry"))
    assert len(calls) == 3
    assert slept == [1.0, 2.0]


def test_exhausted_makes_the_one_line_error() -> None:
    async def always() -> None:
        raise FlakyError(0)

    with pytest.raises(FatalError, match="failure 0 after 2"):
        asyncio.run(
            retry.retrying(
                "x",
                always,
                _policy(2, []),
                kind="upstream",
                exhausted=lambda e, n: FatalError(f"{e} after {n}"),
            )
        )


def test_a_permanent_error_is_not_retried() -> None:
    calls: list[int] = []

    async def fatal() -> None:
        calls.append(1)
        raise FatalError("no")

    with pytest.raises(FatalError):
        asyncio.run(retry.retrying("x", fatal, _policy(5, []), kind="registry"))
    assert calls == [1]


def test_success_after_retries_returns_the_value_and_honours_retry_after() -> None:
    slept: list[float] = []
    calls: list[int] = []

    async def second_time() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise FlakyError(1, retry_after=4.0)
        return "done"

    assert asyncio.run(retry.retrying("x", second_time, _policy(3, slept), kind="quay")) == "done"
    assert slept == [4.0]


def test_observers_see_each_retry_as_a_typed_event_while_observing() -> None:
    seen: list[RetryEvent] = []
    logged: list[RetryEvent] = []
    calls: list[int] = []

    async def twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise FlakyError(len(calls))
        return "ok"

    async def run() -> str:
        return await retry.retrying(
            "GET cd/fedora:40 example.test",
            twice,
            _policy(4, []),
            kind="registry",
            address="example.test",
            on_retry=lambda event, _: logged.append(event),
        )

    with retry.observing(seen.append):
        assert asyncio.run(run()) == "ok"
    assert seen == [
        RetryEvent(
            "GET cd/fedora:40 example.test", 1, 1.0, "failure 1", "registry", "example.test"
        ),
        RetryEvent(
            "GET cd/fedora:40 example.test", 2, 2.0, "failure 2", "registry", "example.test"
        ),
    ]
    assert logged == seen
    calls.clear()
    asyncio.run(run())  # no longer observed
    assert len(seen) == 2


def test_a_budget_ends_at_its_attempts_or_its_deadline() -> None:
    now = [100.0]
    budget = retry.Budget(110.0, 2, clock=lambda: now[0])
    assert not budget.spent
    assert not budget.expired()
    budget.spend()
    assert not budget.spent
    budget.spend()
    assert budget.spent
    assert budget.used == 2
    now[0] = 109.0
    assert budget.left() == 1.0
    now[0] = 111.0
    assert budget.expired()
    assert budget.left() == 0.0
    assert not retry.Budget(110.0, None, clock=lambda: 0.0).spent


def test_a_budget_never_pauses_past_its_deadline() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    budget = retry.Budget(3.0, clock=lambda: now[0])
    asyncio.run(budget.pause(2.0, sleep))
    now[0] = 2.5
    asyncio.run(budget.pause(2.0, sleep))
    assert slept == [2.0, 0.5]


def test_metrics_count_retries_from_the_events() -> None:
    metrics = Metrics()
    count = metrics.retry_observer(lambda url: url.replace("https://canon.test", "http://m:81"))
    asked: list[tuple[retry.Kind, str]] = [
        ("upstream", "https://canon.test/releases.json"),
        ("registry", "quay.test:5000"),
        ("registry", "quay.test:5000"),
        ("restream", ""),
        ("quay", "https://q.test"),
    ]

    async def once_each() -> None:
        for kind, address in asked:
            failed: list[int] = []

            async def fails_once(failed: list[int] = failed) -> None:
                if not failed:
                    failed.append(1)
                    raise FlakyError(1)

            await retry.retrying(
                "x", fails_once, _policy(2, []), kind=kind, address=address, on_retry=print
            )

    with retry.observing(count):
        asyncio.run(once_each())
    sample = metrics.registry.get_sample_value
    assert sample("containerdisks_http_retries_total", {"kind": "upstream", "host": "m:81"}) == 1
    registry = {"kind": "registry", "host": "quay.test:5000"}
    assert sample("containerdisks_http_retries_total", registry) == 2
    assert sample("containerdisks_layer_restreams_total") == 1
