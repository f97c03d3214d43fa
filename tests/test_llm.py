"""The LLM endpoint pool: classification, Retry-After, breaker, buckets, retries and failover, against respx routes."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime

import httpx
import openai
import pytest
import respx

from f.matter import llm
from f.matter.errors import InputError
from f.matter.llm import EndpointCallFailed, FailureKind, RetryPolicy

KEY = "sk-SECRET-123"
MESSAGES = [{"role": "user", "content": "summarise the lease"}]
CONTEXT_MSG = "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens."


class FakeClock:
    """Monotonic fake time; `sleep` advances it and records the delay. Runaway waiting fails instead of hanging."""

    def __init__(self) -> None:
        self.now, self.sleeps, self.log = 1000.0, [], []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        if len(self.sleeps) > 500:
            raise RuntimeError("fake sleep runaway: the pool would wait forever")


def url(name: str) -> str:
    return f"http://{name}.test/v1/chat/completions"


def endpoint(name: str, **kw) -> llm.Endpoint:
    return llm.Endpoint(name=name, base_url=f"http://{name}.test/v1", api_key=KEY, model="llama-3-70b", **kw)


def ok(prompt: int = 10, completion: int = 5, text: str = "done") -> httpx.Response:
    return httpx.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 0, "model": "llama-3-70b",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })  # fmt: skip


def err(status: int, message: str = "upstream exploded", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}}, headers=headers)


@pytest.fixture
def mock():
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def script(mock: respx.Router, clock: FakeClock, name: str, *responses, repeat: bool = False) -> respx.Route:
    """Answer `name`'s requests with `responses` in order (the last one forever if `repeat`), logging the time."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        clock.log.append((name, clock.now))
        item = queue[0] if repeat and len(queue) == 1 else queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return mock.post(url(name)).mock(side_effect=handler)


def run_pool(endpoints, clock, calls=({},), policy=None, gaps=()):
    """Run `complete(**kw)` once per kw in `calls` on one pool (advancing the clock by gaps[i - 1] before call i);
    return the Completions or the EndpointCallFailed raised."""
    policy = policy or RetryPolicy(max_attempts=4, breaker_threshold=50)

    async def go():
        results = []
        async with httpx.AsyncClient() as http:
            pool = llm.EndpointPool(endpoints, policy=policy, http_client=http, clock=clock, sleep=clock.sleep, seed=7)
            async with pool:
                for index, kw in enumerate(calls):
                    clock.now += gaps[index - 1] if 0 < index <= len(gaps) else 0
                    try:
                        results.append(await pool.complete(MESSAGES, **kw))
                    except EndpointCallFailed as exc:
                        results.append(exc)
        return results

    return asyncio.run(go())


def sdk_error(mock, side_effect) -> openai.APIError:
    """A real openai exception: drive the SDK (retries off) against one respx answer."""
    mock.post(url("a")).mock(side_effect=[side_effect])

    async def go():
        async with httpx.AsyncClient() as http:
            client = openai.AsyncOpenAI(api_key=KEY, base_url="http://a.test/v1", http_client=http, max_retries=0)
            with pytest.raises(openai.APIError) as info:
                await client.chat.completions.create(model="llama-3-70b", messages=MESSAGES)
            return info.value

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------------------------
# classify() and retry_after_seconds()


RA = "retry-after"
STATUS_CASES = [
    (err(429, **{RA: "7"}), FailureKind.RATE_LIMITED, 7.0), (err(429), FailureKind.RATE_LIMITED, None),
    (err(429, **{"retry-after-ms": "1500", RA: "9"}), FailureKind.RATE_LIMITED, 1.5),
    (err(408), FailureKind.TIMEOUT, None), (err(409), FailureKind.CONFLICT, None),
    (err(500), FailureKind.SERVER_ERROR, None), (err(502), FailureKind.SERVER_ERROR, None),
    (err(503, **{RA: "3"}), FailureKind.SERVER_ERROR, 3.0), (err(504), FailureKind.SERVER_ERROR, None),
    (err(400, "temperature must be <= 2"), FailureKind.BAD_REQUEST, None),
    (err(400, CONTEXT_MSG), FailureKind.CONTEXT_LENGTH, None),
    (err(401), FailureKind.AUTH, None), (err(403), FailureKind.AUTH, None),
    (err(404, "model llama-3-70b does not exist"), FailureKind.NOT_FOUND, None),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "kind", "retry_after"), STATUS_CASES)
def test_classify_status_errors(mock, answer, kind, retry_after) -> None:
    failure = llm.classify(sdk_error(mock, answer))
    assert (failure.kind, failure.status, failure.retry_after_s) == (kind, answer.status_code, retry_after)
    assert failure.retryable is (answer.status_code in (408, 409, 429) or answer.status_code >= 500)
    assert failure.detail.startswith(f"HTTP {answer.status_code}")


@pytest.mark.parametrize(
    ("raised", "kind", "detail"),
    [(httpx.ReadTimeout("read timed out"), FailureKind.TIMEOUT, "timed out"),
     (httpx.ConnectError("connection refused"), FailureKind.CONNECTION, "connection failed (ConnectError)")],
)  # fmt: skip
def test_classify_transport_errors(mock, raised, kind, detail) -> None:
    exc = sdk_error(mock, raised)
    assert isinstance(exc, openai.APITimeoutError if kind is FailureKind.TIMEOUT else openai.APIConnectionError)
    failure = llm.classify(exc)
    assert (failure.kind, failure.detail, failure.status, failure.retryable) == (kind, detail, None, True)


HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_NOW = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({RA: "12"}, 12.0), ({RA: "1.5"}, 1.5), ({"retry-after-ms": "250", RA: "9"}, 0.25),
     ({"retry-after-ms": "junk", RA: "4"}, 4.0), ({RA: HTTP_DATE}, 30.0),
     ({RA: "Wed, 21 Oct 2015 07:00:00 GMT"}, 0.0), ({RA: "-5"}, 0.0), ({"retry-after-ms": "-100"}, 0.0),
     ({RA: "soon"}, None), ({RA: ""}, None), ({}, None),
     ({RA: "soon, maybe"}, None)],  # garbage that happens to contain a comma
)  # fmt: skip
def test_retry_after_seconds(headers, expected) -> None:
    assert llm.retry_after_seconds(httpx.Headers(headers), now=lambda: DATE_NOW) == expected


# ---------------------------------------------------------------------------------------------------------------
# EndpointPool.complete


def test_success_records_tokens_and_cost(mock, clock) -> None:
    route = script(mock, clock, "a", ok(prompt=1000, completion=200, text="{}"))
    a = endpoint("a", price_per_million_input=3.0, price_per_million_output=15.0)
    [done] = run_pool([a], clock, [{"max_tokens": 300}])
    assert (done.text, done.finish_reason, done.endpoint) == ("{}", "stop", "a")
    assert (done.input_tokens, done.output_tokens) == (1000, 200)
    [record] = done.records
    assert (record.ok, record.attempt, record.input_tokens, record.output_tokens) == (True, 1, 1000, 200)
    assert record.cost_usd == pytest.approx((1000 * 3 + 200 * 15) / 1e6)
    body = json.loads(route.calls.last.request.content)
    assert (body["model"], body["messages"], body["max_tokens"]) == ("llama-3-70b", MESSAGES, 300)
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert clock.sleeps == []


def test_429_fails_over_at_once_and_honours_retry_after(mock, clock) -> None:
    a = script(mock, clock, "a", err(429, **{RA: "20"}), ok(text="from a"))
    script(mock, clock, "b", ok(text="b1"), ok(text="b2"))
    results = run_pool([endpoint("a"), endpoint("b")], clock, [{}, {}, {}], gaps=(1, 21))
    assert [r.text for r in results] == ["b1", "b2", "from a"]
    assert clock.sleeps == []  # b was healthy: no backoff
    assert [name for name, _ in clock.log] == ["a", "b", "b", "a"]
    assert a.call_count == 2 and clock.log[3][1] - clock.log[0][1] >= 20


def test_single_endpoint_waits_at_least_retry_after(mock, clock) -> None:
    script(mock, clock, "a", err(429, **{RA: "5"}), ok())
    [done] = run_pool([endpoint("a")], clock)
    assert done.endpoint == "a" and [r.failure for r in done.records] == ["rate_limited", None]
    assert sum(clock.sleeps) >= 5 - 1e-9
    assert clock.log[1][1] - clock.log[0][1] >= 5 - 1e-9


def test_429s_do_not_spend_attempts_or_trip_the_breaker(mock, clock) -> None:
    script(mock, clock, "a", *[err(429, **{RA: "2"})] * 3, ok())
    [done] = run_pool([endpoint("a")], clock, policy=RetryPolicy(max_attempts=1, breaker_threshold=1))
    assert [r.failure for r in done.records] == ["rate_limited"] * 3 + [None] and sum(clock.sleeps) >= 6 - 1e-9


def test_throttled_retries_are_bounded(mock, clock) -> None:
    route = script(mock, clock, "a", err(429), repeat=True)
    [exc] = run_pool([endpoint("a")], clock, policy=RetryPolicy(max_attempts=1, max_throttled_retries=2))
    assert [f.kind for f in exc.failures] == [FailureKind.RATE_LIMITED] * 3 and route.call_count == 3


def test_pool_leaves_the_given_http_client_open(mock, clock) -> None:
    script(mock, clock, "a", ok())

    async def go() -> bool:
        async with httpx.AsyncClient() as http:
            async with llm.EndpointPool([endpoint("a")], http_client=http, clock=clock, sleep=clock.sleep) as pool:
                await pool.complete(MESSAGES)
            return http.is_closed

    assert not asyncio.run(go()), "EndpointPool.__aexit__ closed an http_client the caller owns"


def test_5xx_retries_then_succeeds(mock, clock) -> None:
    script(mock, clock, "a", err(500), err(503), ok())
    [done] = run_pool([endpoint("a")], clock)
    assert [(r.attempt, r.ok, r.failure) for r in done.records] == [
        (1, False, "server_error"), (2, False, "server_error"), (3, True, None)]  # fmt: skip
    assert len(clock.sleeps) == 2


def test_attempts_exhausted_carry_failures_and_records(mock, clock) -> None:
    route = script(mock, clock, "a", err(502), repeat=True)
    [exc] = run_pool([endpoint("a")], clock, policy=RetryPolicy(max_attempts=3, breaker_threshold=50))
    assert type(exc) is EndpointCallFailed and "all 3 attempts failed" in str(exc)
    assert [(f.kind, f.status) for f in exc.failures] == [(FailureKind.SERVER_ERROR, 502)] * 3
    assert [r.attempt for r in exc.records] == [1, 2, 3] and route.call_count == 3


def test_no_backoff_sleep_after_the_last_attempt(mock, clock) -> None:
    script(mock, clock, "a", err(500), repeat=True)
    run_pool([endpoint("a")], clock, policy=RetryPolicy(max_attempts=3, breaker_threshold=50))
    assert len(clock.sleeps) == 2  # between attempts only: nothing is retried after attempt 3


@pytest.mark.parametrize(
    ("answer", "error", "kind"),
    [(err(401, "invalid api key"), EndpointCallFailed, FailureKind.AUTH),
     (err(404), EndpointCallFailed, FailureKind.NOT_FOUND),
     (err(400, CONTEXT_MSG), llm.ContextLengthExceeded, FailureKind.CONTEXT_LENGTH)],
)  # fmt: skip
def test_unretryable_failures_raise_after_one_call(mock, clock, answer, error, kind) -> None:
    a = script(mock, clock, "a", answer)
    b = script(mock, clock, "b", ok())
    [exc] = run_pool([endpoint("a"), endpoint("b")], clock)
    assert type(exc) is error and [f.kind for f in exc.failures] == [kind]
    assert (a.call_count, b.call_count, len(exc.records)) == (1, 0, 1)


@pytest.mark.parametrize(("prefer", "first"), [(0, "a"), (1, "b"), (2, "c"), (4, "b")])
def test_prefer_picks_endpoint_i_mod_n(mock, clock, prefer, first) -> None:
    for name in "abc":
        script(mock, clock, name, ok(text=name))
    [done] = run_pool([endpoint(n) for n in "abc"], clock, [{"prefer": prefer}])
    assert done.text == first and clock.log[0][0] == first


def test_retry_fails_over_past_the_replica_that_just_failed(mock, clock) -> None:
    script(mock, clock, "b", err(500), ok(text="b"))
    script(mock, clock, "c", ok(text="c"))
    [done] = run_pool([endpoint(n) for n in "abc"], clock, [{"prefer": 1}])
    assert done.text == "c" and [name for name, _ in clock.log] == ["b", "c"] and clock.sleeps == []


def test_failover_reaches_every_replica(mock, clock) -> None:
    script(mock, clock, "a", httpx.ConnectError("refused"), repeat=True)
    script(mock, clock, "b", err(503), repeat=True)
    script(mock, clock, "c", ok(text="c"))
    [done] = run_pool([endpoint(n) for n in "abc"], clock, [{"prefer": 0}], policy=RetryPolicy())
    assert [name for name, _ in clock.log][:3] == ["a", "b", "c"]
    assert not isinstance(done, Exception) and done.text == "c"


def test_backoff_is_full_jitter_within_bounds(mock, clock) -> None:
    script(mock, clock, "a", err(500), repeat=True)
    policy = RetryPolicy(max_attempts=6, base_delay_s=0.5, max_delay_s=3.0, breaker_threshold=50)
    run_pool([endpoint("a")], clock, policy=policy)
    assert len(clock.sleeps) >= 5
    for k, delay in enumerate(clock.sleeps):
        assert 0 <= delay <= min(3.0, 0.5 * 2**k)
    rng = random.Random(3)
    for k, cap in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):  # full jitter: the whole of [0, cap] is used
        draws = [policy.backoff(k, rng) for _ in range(300)]
        assert max(draws) <= cap and max(draws) > 0.9 * cap and min(draws) < 0.1 * cap


def test_json_schema_rejected_falls_back_to_json_object(mock, clock) -> None:
    route = script(mock, clock, "a", err(400, "response_format type json_schema is not supported"), ok(), ok())
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    first, second = run_pool([endpoint("a")], clock, [{"response_format": schema}] * 2)
    assert first.records[0].failure == "invalid_output" and second.records[0].ok
    sent = [json.loads(call.request.content)["response_format"] for call in route.calls]
    assert sent == [schema, {"type": "json_object"}, {"type": "json_object"}]


# ---------------------------------------------------------------------------------------------------------------
# CircuitBreaker and TokenBucket


def test_circuit_breaker_cycle(clock) -> None:
    breaker = llm.CircuitBreaker(threshold=3, cooldown_s=10.0, clock=clock)
    for step in ("fail", "fail", "ok", "fail"):
        breaker.record_failure() if step == "fail" else breaker.record_success()
    assert breaker.state is llm.BreakerState.CLOSED and breaker.try_acquire()  # consecutive failures only
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is llm.BreakerState.OPEN and not breaker.try_acquire()
    assert breaker.ready_at() == clock.now + 10
    clock.now += 9.9
    assert not breaker.try_acquire()
    clock.now += 0.1
    assert breaker.try_acquire() and breaker.state is llm.BreakerState.HALF_OPEN
    assert not breaker.try_acquire()  # exactly one probe
    breaker.release()
    assert breaker.try_acquire() and not breaker.try_acquire()  # released: one more probe
    breaker.record_failure()  # the probe failed: open again, for a full cooldown
    assert breaker.state is llm.BreakerState.OPEN and not breaker.try_acquire()
    clock.now += 10
    assert breaker.try_acquire()
    breaker.record_success()
    assert (breaker.state, breaker.failures) == (llm.BreakerState.CLOSED, 0) and breaker.try_acquire()


def test_pool_skips_an_open_breaker_then_probes_it(mock, clock) -> None:
    a = script(mock, clock, "a", err(500), ok(text="a"))
    script(mock, clock, "b", ok(text="b"), ok(text="b"))
    policy = RetryPolicy(max_attempts=3, breaker_threshold=1, breaker_cooldown_s=30.0)
    results = run_pool([endpoint("a"), endpoint("b")], clock, [{}, {}, {}], policy=policy, gaps=(1, 31))
    assert [r.text for r in results] == ["b", "b", "a"] and a.call_count == 2


def test_context_length_from_a_half_open_probe_does_not_wedge_the_breaker(mock, clock) -> None:
    script(mock, clock, "a", err(500), err(400, CONTEXT_MSG), ok(text="fine"))
    policy = RetryPolicy(max_attempts=1, breaker_threshold=1, breaker_cooldown_s=5.0)
    results = run_pool([endpoint("a")], clock, [{}, {}, {}], policy=policy, gaps=(10, 10))  # 3rd: runaway wait
    assert [type(r) for r in results[:2]] == [EndpointCallFailed, llm.ContextLengthExceeded]
    assert getattr(results[2], "text", None) == "fine"


@pytest.mark.parametrize(("rate", "capacity"), [(60, 1.0), (480, 8.0), (7680, 128.0), (3, 1.0)])
def test_token_bucket_burst_then_waits_for_the_deficit(clock, rate, capacity) -> None:
    # Burst = one second's worth, as TokenBucket's docstring now says (it was ten seconds', rate / 6, before).
    bucket = llm.TokenBucket(rate, clock=clock, sleep=clock.sleep)
    assert bucket.capacity == capacity

    async def go():
        for _ in range(int(capacity)):
            await bucket.take(1)
        assert clock.sleeps == []  # a full burst goes at once
        await bucket.take(1)
        await bucket.take(2)
        await bucket.take(capacity * 5)  # larger than a burst: waits for a full bucket, then leaves debt

    asyncio.run(go())
    per_s = rate / 60
    second = min(2, capacity)
    # take(2) with a one-token burst leaves one token of debt, which the next caller waits off too
    assert clock.sleeps == pytest.approx([1 / per_s, second / per_s, (capacity + 2 - second) / per_s])


def test_pool_rate_limit_waits_use_the_injected_sleep(monkeypatch, mock, clock) -> None:
    async def real_sleep_called(seconds: float) -> None:
        raise AssertionError(f"asyncio.sleep({seconds}) called although the pool was given sleep=")

    monkeypatch.setattr(asyncio, "sleep", real_sleep_called)  # with a fake clock it would never wake up
    script(mock, clock, "a", ok(), ok())
    results = run_pool([endpoint("a", rpm=6)], clock, [{}, {}])
    assert all(not isinstance(r, Exception) for r in results) and sum(clock.sleeps) >= 10 - 1e-9


# ---------------------------------------------------------------------------------------------------------------
# Secrets and configuration


@pytest.mark.parametrize("answer", [err(500), err(401, "invalid api key"), httpx.ConnectError("refused")])
def test_api_key_never_in_errors(mock, clock, answer) -> None:
    route = script(mock, clock, "a", answer, repeat=True)
    [exc] = run_pool([endpoint("a")], clock, policy=RetryPolicy(max_attempts=2, breaker_threshold=50))
    assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"  # it was sent
    texts = [str(exc), repr(exc), *map(str, exc.failures), *map(repr, exc.records)]
    assert exc.failures and all(KEY not in text for text in texts)
    assert KEY not in repr(endpoint("a")) and KEY not in str(endpoint("a"))


def test_endpoints_from_llm_pool_and_openai_resources() -> None:
    pool = llm.endpoints_from_resource({"endpoints": [
        {"name": "vllm-1", "base_url": "http://vllm-1:8000/v1", "model": "llama", "rpm": 60},
        {"name": "groq", "base_url": "https://api.groq.com/openai/v1", "api_key": KEY, "model": "llama3-70b"}]})  # fmt: skip
    assert [(e.name, e.rpm) for e in pool] == [("vllm-1", 60), ("groq", None)]
    assert pool[1].api_key.get_secret_value() == KEY
    [one] = llm.endpoints_from_resource({"api_key": KEY, "base_url": "http://ollama:11434/v1", "model": "llama3", "tpm": 9000})
    assert (one.name, one.base_url, one.model, one.tpm) == ("openai", "http://ollama:11434/v1", "llama3", 9000)
    [default] = llm.endpoints_from_resource({"api_key": KEY})
    assert (default.base_url, default.model) == ("https://api.openai.com/v1", "gpt-4o-mini")


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"endpoints": [{"name": "x", "base_url": "http://x/v1", "model": "m"}] * 2}, "unique"),
        ({"endpoints": [{"name": "x", "base_url": "http://x/v1", "model": "m"},
                        {"name": "y", "base_url": "http://y/v1", "api_key": KEY}]}, "endpoint #2: model"),
        ({"endpoints": [{"name": "x", "base_url": "ftp://x", "api_key": KEY, "model": "m"}]}, "endpoint #1: base_url"),
        ({"endpoints": []}, "at least one endpoint"),
        ({"url": "http://x"}, "expected"),
        (["not", "a", "mapping"], "must be an object"),
    ],
)  # fmt: skip
def test_bad_resources_are_input_errors_without_the_key(resource, expected) -> None:
    with pytest.raises(InputError) as info:
        llm.endpoints_from_resource(resource)
    assert expected in str(info.value) and KEY not in str(info.value)
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_a_request_larger_than_a_burst_leaves_debt_that_later_callers_wait_off(clock) -> None:
    bucket = llm.TokenBucket(60_000, clock=clock, sleep=clock.sleep)  # 1,000 tokens a second, bursts of 1,000

    async def go():
        await bucket.take(8_000)  # goes at once (a full burst is there) but leaves 7,000 of debt
        assert clock.sleeps == []
        await bucket.take(1_000)

    asyncio.run(go())
    assert sum(clock.sleeps) == pytest.approx(8.0), "the rate holds: 9,000 tokens take 9 seconds' worth of refill"


def test_an_answer_without_choices_is_retried_as_invalid_output(mock, clock) -> None:
    empty = httpx.Response(200, json={"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": []})
    script(mock, clock, "a", empty, ok(text="after"))
    [result] = run_pool([endpoint("a")], clock)
    assert result.text == "after"
    assert [r.failure for r in result.records] == ["invalid_output", None]
