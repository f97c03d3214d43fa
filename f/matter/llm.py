"""The LLM endpoint pool: many OpenAI-compatible Llama 3 70B replicas behind one retry and failover policy.

Endpoints are data (the `llm_pool` resource: base_url, key, model, limits, prices), not code; vLLM, Azure AI,
Groq, Ollama and the project's simulator are all just endpoints. The OpenAI SDK's own retries are off so that
one policy governs every call:

- per-endpoint concurrency limit, and rpm / tpm token buckets when the endpoint has them;
- `Retry-After` / `retry-after-ms` honoured: the endpoint is not asked again before then;
- exponential backoff with full jitter, a per-request timeout;
- a circuit breaker per endpoint (opens after repeated failures, half-opens after a cooldown);
- failover: a retry goes to the next healthy replica; caller i prefers endpoint i mod n.

Which failures retry is explicit (`RETRYABLE`); a context-length error raises `ContextLengthExceeded` so the
caller can split the window instead; auth and not-found errors fail at once. Every attempt is recorded as a
`CallRecord` (tokens, seconds, outcome), from which cost is derived.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp  # noqa: F401 - the SDK's aiohttp transport (below) needs it; named here so locks include it
import httpx
import httpx2
import openai
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .errors import EndpointError, InputError

# ---------------------------------------------------------------------------------------------------------------
# Configuration


class Endpoint(BaseModel):
    """One OpenAI-compatible endpoint serving the model."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    base_url: str = Field(pattern=r"^https?://", description="e.g. http://vllm-1:8000/v1")
    api_key: SecretStr = SecretStr("")
    model: str = Field(min_length=1)
    max_concurrency: int = Field(default=16, ge=1, le=4096)
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute the endpoint allows.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens (in + out) per minute the endpoint allows.")
    context_tokens: int = Field(default=8192, ge=1024, description="For the record; ingest plans windows with its own context_tokens.")
    price_per_million_input: float = Field(default=0.0, ge=0)
    price_per_million_output: float = Field(default=0.0, ge=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price_per_million_input + output_tokens * self.price_per_million_output) / 1e6


def endpoints_from_resource(resource: Mapping[str, Any]) -> list[Endpoint]:
    """Read an `llm_pool` resource, or a built-in `openai` resource as a pool of one."""
    if not isinstance(resource, Mapping):
        raise InputError("the llm_pool resource must be an object", where="llm_pool")
    if "endpoints" in resource:
        raw = resource["endpoints"]
    elif "api_key" in resource:  # Windmill's `openai` resource (+ base_url / model for self-hosted servers)
        raw = [
            {
                "name": resource.get("name") or "openai",
                "base_url": resource.get("base_url") or "https://api.openai.com/v1",
                "api_key": resource["api_key"],
                "model": resource.get("model") or "gpt-4o-mini",
                **{k: v for k, v in resource.items() if k in Endpoint.model_fields and k not in ("name", "base_url", "api_key", "model")},
            }
        ]
    else:
        raise InputError("expected {'endpoints': [...]} or an openai resource {'api_key', ...}", where="llm_pool")
    if not isinstance(raw, list) or not raw:
        raise InputError("needs at least one endpoint", where="llm_pool.endpoints")
    endpoints = []
    for index, item in enumerate(raw):
        try:
            endpoints.append(Endpoint.model_validate(item))
        except ValidationError as exc:
            # Name the field, never echo the value: it may be the API key.
            fields = ", ".join(".".join(map(str, e["loc"])) + f" ({e['msg']})" for e in exc.errors(include_url=False))
            raise InputError(f"endpoint #{index + 1}: {fields}", where="llm_pool.endpoints") from None
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise InputError(f"endpoint names must be unique, got {names}", where="llm_pool.endpoints")
    return endpoints


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard to try one request. Defaults suit 70B models that answer in 5-60 s."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 120.0
    max_retry_after_s: float = 120.0
    max_throttled_retries: int = 200  # 429s wait for the endpoint instead of spending attempts
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**retry)]."""
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**retry))


DEFAULT_POLICY = RetryPolicy()


# ---------------------------------------------------------------------------------------------------------------
# Failures


class FailureKind(enum.StrEnum):
    RATE_LIMITED = "rate_limited"  # 429
    TIMEOUT = "timeout"  # 408, client timeout
    CONFLICT = "conflict"  # 409
    SERVER_ERROR = "server_error"  # 5xx
    CONNECTION = "connection"  # refused, reset, DNS
    INVALID_OUTPUT = "invalid_output"  # answer is not the JSON asked for
    CONTEXT_LENGTH = "context_length"  # the prompt does not fit: split the window
    AUTH = "auth"  # 401, 403
    NOT_FOUND = "not_found"  # 404: wrong base_url or model
    BAD_REQUEST = "bad_request"  # other 4xx


RETRYABLE = frozenset(
    {
        FailureKind.RATE_LIMITED,
        FailureKind.TIMEOUT,
        FailureKind.CONFLICT,
        FailureKind.SERVER_ERROR,
        FailureKind.CONNECTION,
        FailureKind.INVALID_OUTPUT,
    }
)
_CONTEXT_MARKERS = ("context length", "context_length", "maximum context", "too many tokens", "prompt is too long")


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    detail: str
    status: int | None = None
    retry_after_s: float | None = None
    about_response_format: bool = False  # a 400 that names response_format: the server lacks json_schema

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


def classify(exc: BaseException, secrets: Sequence[str] = ()) -> Failure:
    """Map an openai / httpx exception to a Failure. Details never include request headers (the key), and any of
    `secrets` that the server quotes back in its error text (some 401s quote the key they were sent) is masked."""
    if isinstance(exc, _EmptyAnswer):
        return Failure(FailureKind.INVALID_OUTPUT, str(exc))
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | httpx2.TimeoutException | asyncio.TimeoutError):
        return Failure(FailureKind.TIMEOUT, "timed out")
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | httpx2.TransportError):
        return Failure(FailureKind.CONNECTION, f"connection failed ({type(exc.__cause__ or exc).__name__})")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        text = _error_text(exc)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        detail = f"HTTP {status}: {_short(text)}"
        retry_after = retry_after_seconds(exc.response.headers)
        if status == 429:
            return Failure(FailureKind.RATE_LIMITED, detail, status, retry_after)
        if status == 408:
            return Failure(FailureKind.TIMEOUT, detail, status, retry_after)
        if status == 409:
            return Failure(FailureKind.CONFLICT, detail, status, retry_after)
        if status >= 500:
            return Failure(FailureKind.SERVER_ERROR, detail, status, retry_after)
        if status in (401, 403):
            return Failure(FailureKind.AUTH, detail, status)
        if status == 404:
            return Failure(FailureKind.NOT_FOUND, detail, status)
        lowered = text.lower()
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return Failure(FailureKind.CONTEXT_LENGTH, detail, status)
        return Failure(FailureKind.BAD_REQUEST, detail, status, about_response_format="response_format" in lowered)
    raise exc  # not an HTTP failure: a bug, let it surface


class _EmptyAnswer(Exception):
    """A 200 answer without choices (seen from proxies): invalid output, retried like one."""


def retry_after_seconds(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """`retry-after-ms` (OpenAI, Azure), else `retry-after` as seconds or an HTTP date."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, parsed.timestamp() - now())


def _error_text(exc: openai.APIStatusError) -> str:
    """The server's error message, from a JSON error body or a plain-text one."""
    text = exc.message or ""
    try:
        body = exc.response.text
    except Exception:  # a streamed body that was never read
        body = ""
    return text if body and body in text else f"{text} {body}".strip()


def _short(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------------------------
# Breaker and rate limits


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown_s` lets one probe through (half-open); the
    probe's success closes it, its failure opens it again."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False

    def ready_at(self) -> float:
        """When a request may next go through (now or later)."""
        if self.state is BreakerState.OPEN:
            return self.opened_at + self.cooldown_s
        return self._clock()

    def try_acquire(self) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() >= self.opened_at + self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self.state, self.failures, self._probing = BreakerState.CLOSED, 0, False

    def release(self) -> None:
        """The request ended without an answer either way (cancelled): let another probe through."""
        self._probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state, self.opened_at = BreakerState.OPEN, self._clock()
        self._probing = False


class TokenBucket:
    """`rate_per_minute` units a minute, refilled continuously, in bursts of at most one second's worth (hosted
    APIs enforce their per-minute limits over short windows, so a minute's worth at once would meet 429s)."""

    def __init__(
        self,
        rate_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._sleep = sleep
        self.rate_per_s = rate_per_minute / 60
        self.capacity = max(1.0, rate_per_minute / 60)
        self.tokens = self.capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        """Wait until the bucket holds a burst's worth (or `amount`, if smaller), then take all of `amount`: a
        request larger than a burst leaves the bucket in debt, which later callers wait off, so the rate holds."""
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate_per_s)
                self._updated = now
                needed = min(amount, self.capacity)
                if self.tokens >= needed:
                    self.tokens -= amount
                    return
                await self._sleep((needed - self.tokens) / self.rate_per_s)


# ---------------------------------------------------------------------------------------------------------------
# The pool


@dataclass
class CallRecord:
    """One attempt at one endpoint."""

    endpoint: str
    attempt: int
    ok: bool
    seconds: float
    input_tokens: int = 0
    output_tokens: int = 0
    failure: str | None = None
    cost_usd: float = 0.0


class EndpointCallFailed(EndpointError):
    """Every attempt failed, or a failure that no retry can fix happened. Carries what each attempt cost."""

    def __init__(self, message: str, failures: Sequence[Failure] = (), records: Sequence[CallRecord] = ()) -> None:
        self.failures = list(failures)
        self.records = list(records)
        super().__init__(message)


class ContextLengthExceeded(EndpointCallFailed):
    """The prompt does not fit the endpoint's context: split the window and try again."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    endpoint: str
    input_tokens: int
    output_tokens: int
    records: list[CallRecord] = field(default_factory=list)


class _Replica:
    def __init__(
        self, endpoint: Endpoint, client: AsyncOpenAI, policy: RetryPolicy, clock: Callable[[], float], sleep: Callable[[float], Any]
    ) -> None:
        self.endpoint = endpoint
        self.client = client
        self.slots = asyncio.Semaphore(endpoint.max_concurrency)
        self.breaker = CircuitBreaker(policy.breaker_threshold, policy.breaker_cooldown_s, clock)
        self.requests = TokenBucket(endpoint.rpm, clock, sleep) if endpoint.rpm else None
        self.tokens = TokenBucket(endpoint.tpm, clock, sleep) if endpoint.tpm else None
        self.not_before = 0.0  # from Retry-After
        self.json_schema_ok = True  # false once the server rejected response_format json_schema

    def ready_at(self) -> float:
        return max(self.not_before, self.breaker.ready_at())


def _move_last(items: list, item: object) -> None:
    if item in items:
        items.remove(item)
    items.append(item)


class EndpointPool:
    """Owns one `AsyncOpenAI` client per endpoint. Use `async with EndpointPool(endpoints) as pool:`."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        seed: int | None = None,
    ) -> None:
        if not endpoints:
            raise InputError("an endpoint pool needs at least one endpoint", where="llm_pool")
        self.endpoints = list(endpoints)
        self.policy = policy
        self._http_client = http_client
        self._owns_http = http_client is None
        self._clock, self._sleep = clock, sleep
        self._rng = random.Random(seed)
        self._replicas: list[_Replica] = []
        self._closed = False
        # Every key of the pool: a proxy in front of several replicas may quote any of them
        self._secrets = sorted({e.api_key.get_secret_value() for e in self.endpoints} - {""}, key=len, reverse=True)

    async def __aenter__(self) -> Self:
        if self._closed:
            raise EndpointError("this EndpointPool was closed; create a new one")
        self._replicas = [
            _Replica(
                e,
                AsyncOpenAI(
                    api_key=e.api_key.get_secret_value() or "none",
                    base_url=e.base_url,
                    max_retries=0,  # one retry policy: ours
                    timeout=self.policy.timeout_s,
                    http_client=self._http_client or self._connections(e),
                ),
                self.policy,
                self._clock,
                self._sleep,
            )
            for e in self.endpoints
        ]
        return self

    def _connections(self, endpoint: Endpoint) -> httpx2.AsyncClient:
        """One connection pool per endpoint, sized to its concurrency, on the SDK's aiohttp transport.

        Measured here (bench/RESULTS.md): a classic `httpx.AsyncClient` shared by all endpoints cost ~3x the
        client CPU per call of the SDK's default client (httpcore scans its whole pool on every request); the
        SDK's aiohttp transport costs ~20% less than its default httpx2 client."""
        size = endpoint.max_concurrency + 4
        return openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size),
            timeout=httpx2.Timeout(self.policy.timeout_s, connect=10.0),
        )

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        if self._owns_http:  # a client the caller passed in stays the caller's to close
            for replica in self._replicas:
                await replica.client.close()
        self._replicas = []

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        prefer: int = 0,
        response_format: dict | None = None,
        max_tokens: int = 2048,
        temperature: float = 0.0,
        estimated_input_tokens: int = 0,
    ) -> Completion:
        """One chat completion, with retries and failover; raises EndpointCallFailed or ContextLengthExceeded."""
        if not self._replicas:
            raise EndpointError("EndpointPool used outside `async with`")
        records: list[CallRecord] = []
        failures: list[Failure] = []
        failed: list[_Replica] = []  # replicas that failed this request, oldest failure first
        attempts = throttled = 0
        while True:
            replica = await self._choose(prefer, failed)
            started = self._clock()
            try:
                async with replica.slots:
                    # Requests that queued for a slot before the endpoint said Retry-After wait for it too.
                    while (wait := replica.not_before - self._clock()) > 0:
                        await self._sleep(wait + self._rng.uniform(0, min(wait, 1.0)))
                    if replica.requests:
                        await replica.requests.take(1)
                    if replica.tokens:
                        await replica.tokens.take(estimated_input_tokens + max_tokens)
                    started = self._clock()
                    response = await replica.client.chat.completions.create(
                        model=replica.endpoint.model,
                        messages=messages,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        **self._format_args(replica, response_format),
                    )
                    if not response.choices:
                        raise _EmptyAnswer("the answer has no choices")
            except (TimeoutError, openai.APIError, httpx.HTTPError, httpx2.HTTPError, _EmptyAnswer) as exc:
                try:
                    failure = classify(exc, self._secrets)
                except BaseException:  # not a failure we know: let it surface, but free a half-open probe first
                    replica.breaker.release()
                    raise
                if failure.about_response_format and response_format and replica.json_schema_ok:
                    replica.json_schema_ok = False  # server without json_schema: fall back to json_object
                    failure = Failure(FailureKind.INVALID_OUTPUT, "json_schema unsupported; falling back to json_object")
                records.append(CallRecord(replica.endpoint.name, attempts + throttled + 1, False, self._clock() - started, failure=failure.kind.value))
                failures.append(failure)
                if failure.kind is FailureKind.CONTEXT_LENGTH:
                    replica.breaker.record_success()  # the server answered: it is healthy, the prompt is too long
                    raise ContextLengthExceeded(f"{replica.endpoint.name}: {failure.detail}", failures, records) from None
                if failure.kind is FailureKind.RATE_LIMITED:
                    throttled += 1
                    pause = failure.retry_after_s if failure.retry_after_s is not None else self.policy.backoff(min(throttled, 8), self._rng)
                    replica.not_before = max(replica.not_before, self._clock() + min(pause, self.policy.max_retry_after_s))
                    replica.breaker.release()
                    if throttled <= self.policy.max_throttled_retries:
                        # A throttled endpoint is healthy, only busy: wait for it (or fail over) without spending
                        # an attempt or counting against its breaker.
                        _move_last(failed, replica)
                        continue
                elif failure.retry_after_s is not None:
                    replica.not_before = self._clock() + min(failure.retry_after_s, self.policy.max_retry_after_s)
                replica.breaker.record_failure()
                attempts += 1
                if not failure.retryable:
                    raise EndpointCallFailed(
                        f"{replica.endpoint.name}: {failure.kind.value}: {failure.detail}", failures, records
                    ) from None
                if attempts >= self.policy.max_attempts:
                    break
                _move_last(failed, replica)
                await self._pause_before_retry(attempts, replica)
                continue
            except BaseException:  # cancelled, or a bug: free a half-open probe for the next request
                replica.breaker.release()
                raise
            replica.breaker.record_success()
            usage = response.usage
            input_tokens = usage.prompt_tokens if usage else 0
            output_tokens = usage.completion_tokens if usage else 0
            records.append(
                CallRecord(
                    replica.endpoint.name, attempts + throttled + 1, True, self._clock() - started, input_tokens, output_tokens,
                    cost_usd=replica.endpoint.cost(input_tokens, output_tokens),
                )
            )
            choice = response.choices[0]
            return Completion(
                text=choice.message.content or "",
                finish_reason=choice.finish_reason,
                endpoint=replica.endpoint.name,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                records=records,
            )
        counts = Counter(f.kind.value for f in failures)
        summary = ", ".join(f"{kind} x{count}" if count > 1 else kind for kind, count in counts.items())
        raise EndpointCallFailed(f"all {self.policy.max_attempts} attempts failed ({summary})", failures, records)

    @staticmethod
    def _format_args(replica: _Replica, response_format: dict | None) -> dict:
        if response_format is None:
            return {}
        if replica.json_schema_ok or response_format.get("type") != "json_schema":
            return {"response_format": response_format}
        return {"response_format": {"type": "json_object"}}

    async def _choose(self, prefer: int, failed: list[_Replica]) -> _Replica:
        """The preferred replica if it can take a request now, else the next one that can (failover). Replicas
        that already failed this request go last, the most recent failure last of all, so a retry reaches every
        replica before it returns to a failing one. When none can take it, wait for the first to be ready."""
        count = len(self._replicas)
        rotation = [self._replicas[(prefer + step) % count] for step in range(count)]
        order = [r for r in rotation if r not in failed] + failed
        while True:
            now = self._clock()
            for replica in order:
                if replica.not_before <= now and replica.breaker.try_acquire():
                    return replica
            wait = min(replica.ready_at() for replica in order) - now
            await self._sleep(min(max(wait, 0.01), self.policy.max_delay_s))

    async def _pause_before_retry(self, attempt: int, failed: _Replica) -> None:
        """No pause when another replica can take the retry now; otherwise backoff with full jitter."""
        now = self._clock()
        if any(r is not failed and r.not_before <= now and r.breaker.state is BreakerState.CLOSED for r in self._replicas):
            return
        await self._sleep(self.policy.backoff(attempt - 1, self._rng))
