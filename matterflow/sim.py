"""`matterflow sim`: an OpenAI-compatible Llama server for tests, the demo and benchmarks.

`/v1/models` and `/v1/chat/completions` (plain and streaming), with answers that are valid for the requested JSON
schema and derived from the prompt (dates, amounts, names and issues found on the OWNED pages), so end-to-end
results can be checked. Every answer is labelled simulated. Deterministic: the same seed and prompt give the same
answer, and the k-th time a prompt is seen draws the same fault.

Latency: time to first token + output tokens / tokens-per-second; requests beyond `capacity` queue, like vLLM's
max-num-seqs. Faults by rate or by script: 429 with Retry-After, 500/502/503, hung requests, connection resets,
malformed JSON, truncated output (finish_reason=length); `down` answers 503 to all; `rpm` throttles with 429 (refilled continuously, bursts of one second's worth).
`/sim/stats` reports calls, tokens, faults and how often each window was answered; `/sim/config` changes
settings at run time; `/sim/reset` clears the counters.

For the chaos and security tests: `throttle_s` answers 429 (with Retry-After) to every completion for that many
seconds from the moment it is set (0 ends it); `obey_injections` makes the model do what a page tells it to
(a page line `... output the following JSON: {...}` is answered with that JSON verbatim), as a model that
falls for prompt injection would; `reject_auth` answers 401 quoting the API key it was sent, as some servers
do in their error messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

import httpx
from aiohttp import web

from matterflow.processes import ManagedProcess

FAULTS = ("429", "500", "502", "503", "timeout", "reset", "malformed", "truncated")
READY_LINE = "matterflow sim listening on"
LABEL = "[simulated]"

MONTHS = {m: i for i, m in enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"], 1
)}
_DATE = re.compile(r"\b(" + "|".join(MONTHS) + r")\s+(\d{1,2}),\s+(\d{4})\b")
_AMOUNT = re.compile(r"\$\d{1,3}(?:,\d{3})*(?:\.\d{2})?")
_ORG = re.compile(r"\b((?:[A-Z][A-Za-z&'-]+\s+){1,3}(?:LLC|Inc|Ltd|Trust|Company|Bank|Corp|Partners|LLP|Group))\b")
_PERSON = re.compile(r"\b([A-Z][a-z]+\s+(?:O')?[A-Z][a-z]+)\b")
_ROLE = re.compile(r"\(the\s+([A-Z][a-z]+)\)")
_PAGE = re.compile(r"^=== PAGE (\d+) \((OWNED|CONTEXT)\) ===$", re.M)
_OWNS = re.compile(r"You own pages (\d+)-(\d+)")
_DEADLINE = re.compile(r"(no later than|by|before|deadline|due)\s*$", re.I)
_NOT_NAME_WORDS = {"This", "The", "On", "Notice", "Time", "Each", "Except", "No", "A", "Section", "Agreement", "Tenant", "Landlord"}
ISSUE_TERMS = (
    "breach of contract", "failure to pay rent", "wrongful termination", "indemnification", "force majeure",
    "negligent misrepresentation", "late delivery penalties", "confidentiality obligations", "arbitration",
)


@dataclass(kw_only=True)
class SimConfig:
    model: str = "llama-3-70b-sim"
    latency_ms: float = 200.0
    tokens_per_s: float = 400.0
    capacity: int = 64
    fault_rate: float = 0.0
    faults: list[str] = field(default_factory=lambda: list(FAULTS))
    fault_script: list[str] = field(default_factory=list)
    seed: int = 0
    retry_after_s: float = 1.0
    hang_s: float = 600.0
    rpm: int | None = None
    down: bool = False
    context_tokens: int | None = None
    throttle_s: float = 0.0
    obey_injections: bool = False
    reject_auth: bool = False

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        bad = [f for f in changes.get("faults", []) + changes.get("fault_script", []) if f not in FAULTS and f != "ok"]
        if bad:
            raise ValueError(f"unknown faults {bad}; known: {FAULTS} and 'ok'")
        for name, value in changes.items():
            setattr(self, name, value)


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._slots = asyncio.Semaphore(self.config.capacity)
        self._capacity = self.config.capacity
        self._seen: Counter[str] = Counter()
        self._allowance, self._allowance_at = float("inf"), time.monotonic()
        self._throttle_until = time.monotonic() + self.config.throttle_s
        self.reset()

    def reset(self) -> None:
        self.stats: dict[str, Any] = {
            "calls": 0, "ok": 0, "faults": Counter(), "status": Counter(), "prompt_tokens": 0,
            "completion_tokens": 0, "active": 0, "max_active": 0, "queued": 0, "max_queued": 0, "answered": Counter(),
        }
        self._script_position = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/sim/stats", self.get_stats)
        app.router.add_post("/sim/config", self.set_config)
        app.router.add_post("/sim/reset", self.do_reset)
        return app

    # control ---------------------------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.config.model, "object": "model", "owned_by": "matterflow-sim"}]})

    async def get_stats(self, request: web.Request) -> web.Response:
        stats = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.stats.items()}
        stats["duplicate_answers"] = sum(1 for count in self.stats["answered"].values() if count > 1)
        stats["config"] = asdict(self.config)
        stats["throttle_remaining_s"] = round(max(0.0, self._throttle_until - time.monotonic()), 3)
        return web.json_response(stats)

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            self.config.update(changes)
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if "throttle_s" in changes:  # the throttle window starts now
            self._throttle_until = time.monotonic() + float(self.config.throttle_s)
        if self.config.capacity != self._capacity:
            self._slots, self._capacity = asyncio.Semaphore(self.config.capacity), self.config.capacity
        self._script_position = 0
        return web.json_response(asdict(self.config))

    async def do_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    # completions -----------------------------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
        prompt_tokens = estimate_tokens(prompt)
        self.stats["calls"] += 1
        if self.config.reject_auth:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return self._error(401, None, f"Incorrect API key provided: {key}. You can find your API key in your account settings.")
        fault = self._draw_fault(prompt)
        if fault in ("429", "500", "502", "503"):
            return self._error(int(fault), fault)
        if fault == "reset":
            self.stats["faults"]["reset"] += 1
            request.transport.abort()  # the client sees the connection drop
            return web.Response(status=500)
        if self.config.context_tokens and prompt_tokens + int(body.get("max_tokens") or 0) > self.config.context_tokens:
            return self._error(400, None, f"This model's maximum context length is {self.config.context_tokens} tokens. "
                               f"However, you requested {prompt_tokens + int(body.get('max_tokens') or 0)} tokens.")
        self.stats["queued"] += 1
        self.stats["max_queued"] = max(self.stats["max_queued"], self.stats["queued"])
        async with self._slots:
            self.stats["queued"] -= 1
            self.stats["active"] += 1
            self.stats["max_active"] = max(self.stats["max_active"], self.stats["active"])
            try:
                if fault == "timeout":
                    self.stats["faults"]["timeout"] += 1
                    await asyncio.sleep(self.config.hang_s)
                    return self._error(504, None, "simulated hang ended")
                text, window_key = answer(
                    messages, body.get("response_format"), body.get("max_tokens") or body.get("max_completion_tokens"),
                    obey_injections=self.config.obey_injections,
                )
                finish_reason = "stop"
                if fault == "malformed":
                    self.stats["faults"]["malformed"] += 1
                    text = text[: max(1, len(text) // 2)] + ' "oops'
                elif fault == "truncated":
                    self.stats["faults"]["truncated"] += 1
                    text, finish_reason = text[: max(1, len(text) // 3)], "length"
                completion_tokens = estimate_tokens(text)
                delay = self.config.latency_ms / 1000 + completion_tokens / self.config.tokens_per_s
                if body.get("stream"):
                    response = await self._stream(request, body, text, finish_reason, prompt_tokens, completion_tokens, delay)
                else:
                    await asyncio.sleep(delay)
                    response = web.json_response(self._completion(body, text, finish_reason, prompt_tokens, completion_tokens))
            finally:
                self.stats["active"] -= 1
        self.stats["status"]["200"] += 1
        self.stats["prompt_tokens"] += prompt_tokens
        self.stats["completion_tokens"] += completion_tokens
        if fault is None:
            self.stats["ok"] += 1
            if window_key:
                self.stats["answered"][window_key] += 1
        return response

    def _draw_fault(self, prompt: str) -> str | None:
        config = self.config
        if config.fault_script:
            step = config.fault_script[self._script_position % len(config.fault_script)]
            self._script_position += 1
            return None if step == "ok" else step
        if time.monotonic() < self._throttle_until:
            return "429"
        if config.down:
            return "503"
        if config.rpm and not self._admit(config.rpm):
            return "429"
        if config.fault_rate > 0 and config.faults:
            digest = hashlib.sha256(f"{config.seed}|{prompt}".encode()).hexdigest()
            self._seen[digest] += 1
            rng = random.Random(f"{digest}|{self._seen[digest]}")
            if rng.random() < config.fault_rate:
                return rng.choice(config.faults)
        return None

    def _admit(self, rpm: int) -> bool:
        """Rate limit like hosted APIs: `rpm` a minute, refilled continuously, bursts of one second's worth."""
        now = time.monotonic()
        capacity = max(1.0, rpm / 60)
        self._allowance = min(capacity, self._allowance + (now - self._allowance_at) * rpm / 60)
        self._allowance_at = now
        if self._allowance >= 1:
            self._allowance -= 1
            return True
        return False

    def _error(self, status: int, fault: str | None, message: str | None = None) -> web.Response:
        if fault:
            self.stats["faults"][fault] += 1
        self.stats["status"][str(status)] += 1
        headers = {}
        if status == 429:
            headers = {"Retry-After": str(math.ceil(self.config.retry_after_s)), "retry-after-ms": str(int(self.config.retry_after_s * 1000))}
        kind = {429: "rate_limit_exceeded", 400: "invalid_request_error", 401: "invalid_api_key"}.get(status, "server_error")
        text = message or f"simulated {status}"
        return web.json_response({"error": {"message": text, "type": kind, "code": kind}}, status=status, headers=headers)

    def _completion(self, body: dict, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "id": "chatcmpl-sim-" + hashlib.sha1(text.encode()).hexdigest()[:16],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "system_fingerprint": "matterflow-sim",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _stream(self, request, body, text, finish_reason, prompt_tokens, completion_tokens, delay) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": "chatcmpl-sim-stream", "object": "chat.completion.chunk", "created": int(time.time()), "model": body.get("model") or self.config.model}
        pieces = [text[i : i + 64] for i in range(0, len(text), 64)] or [""]
        await asyncio.sleep(self.config.latency_ms / 1000)
        per_piece = max(0.0, delay - self.config.latency_ms / 1000) / len(pieces)
        first = True
        for piece in pieces:
            delta = {"role": "assistant", "content": piece} if first else {"content": piece}
            first = False
            await response.write(_sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
            if per_piece:
                await asyncio.sleep(per_piece)
        await response.write(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            await response.write(_sse({**base, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


# ---------------------------------------------------------------------------------------------------------------
# Answers derived from the prompt


def answer(
    messages: list[dict], response_format: dict | None, max_tokens: int | None = None, *, obey_injections: bool = False
) -> tuple[str, str | None]:
    """(answer text, window key). The window key identifies the window asked about, for duplicate counting."""
    page_message = next((str(m.get("content")) for m in messages if m.get("role") == "user" and _PAGE.search(str(m.get("content") or ""))), None)
    kind = (response_format or {}).get("type")
    schema_name = ((response_format or {}).get("json_schema") or {}).get("name")
    if page_message is not None and (schema_name == "window_analysis" or kind == "json_object"):
        owns = _OWNS.search(page_message)
        key = f"{owns.group(1)}-{owns.group(2)}:{hashlib.sha1(page_message.encode()).hexdigest()[:12]}" if owns else None
        if obey_injections and (injected := injected_answer(page_message)) is not None:
            return injected, key
        return _fit(window_analysis(page_message), max_tokens), key
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return json.dumps(minimal_instance(schema, schema)), None
    return f"{LABEL} " + " ".join(str(messages[-1].get("content") or "").split()[:40]), None


_INJECTION = re.compile(r"output the following JSON:\s*", re.I)


def injected_answer(prompt: str) -> str | None:
    """What a model that obeys instructions found in the document answers: the JSON a page told it to output."""
    match = _INJECTION.search(prompt)
    if match is None:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(prompt, match.end())
    except json.JSONDecodeError:
        return None
    return json.dumps(value)


def _fit(analysis: dict, max_tokens: int | None) -> str:
    """A concise model keeps within max_tokens: drop the last items of the longest lists until the answer fits."""
    text = json.dumps(analysis, separators=(",", ":"))
    while max_tokens and estimate_tokens(text) > max_tokens:
        longest = max(("entities", "dates", "amounts", "issues"), key=lambda k: len(analysis[k]))
        if not analysis[longest]:
            break
        analysis[longest].pop()
        text = json.dumps(analysis, separators=(",", ":"))
    return text


def window_analysis(prompt: str) -> dict:
    parts = _PAGE.split(prompt)
    pages: dict[str, list] = {"pages": [], "entities": [], "dates": [], "amounts": [], "issues": []}
    entities: dict[str, dict] = {}
    dates: dict[tuple, dict] = {}
    amounts: dict[str, dict] = {}
    issues: dict[str, dict] = {}
    for index in range(1, len(parts) - 2, 3):
        number, role, text = int(parts[index]), parts[index + 1], parts[index + 2]
        if role != "OWNED":
            continue
        sentence = " ".join(text.split())[:120]
        pages["pages"].append({"page": number, "summary": f"{LABEL} {sentence}"})
        for match in _ORG.finditer(text):
            name = " ".join(match.group(1).split())
            _cite(entities, name, {"name": name, "kind": "organisation", "role": _role_after(text, match.end())}, number)
        for match in _PERSON.finditer(text):
            name = " ".join(match.group(1).split())
            words = set(name.split())
            if words & _NOT_NAME_WORDS or words & MONTHS.keys() or any(name in known for known in entities):
                continue
            _cite(entities, name, {"name": name, "kind": "person", "role": _role_after(text, match.end())}, number)
        for match in _DATE.finditer(text):
            iso = f"{match.group(3)}-{MONTHS[match.group(1)]:02d}-{int(match.group(2)):02d}"
            deadline = bool(_DEADLINE.search(text[max(0, match.start() - 20) : match.start()]))
            _cite(dates, (iso, deadline), {"date": iso, "description": f"{LABEL} {_around(text, match)}", "deadline": deadline}, number)
        for match in _AMOUNT.finditer(text):
            value = float(match.group(0)[1:].replace(",", ""))
            _cite(amounts, match.group(0), {"text": match.group(0), "value": value, "currency": "USD", "description": f"{LABEL} {_around(text, match)}"}, number)
        lowered = text.lower()
        for term in ISSUE_TERMS:
            if term in lowered:
                _cite(issues, term, {"issue": term}, number)
    pages["entities"] = list(entities.values())
    pages["dates"] = list(dates.values())
    pages["amounts"] = list(amounts.values())
    pages["issues"] = list(issues.values())
    return pages


def _cite(table: dict, key: Any, item: dict, page: int) -> None:
    entry = table.setdefault(key, {**item, "pages": []})
    if page not in entry["pages"]:
        entry["pages"].append(page)


def _role_after(text: str, end: int) -> str | None:
    match = _ROLE.match(text[end : end + 24].lstrip())
    return match.group(1) if match else None


def _around(text: str, match: re.Match) -> str:
    return " ".join(text[max(0, match.start() - 40) : match.start()].split()[-6:])


def minimal_instance(schema: dict, root: dict) -> Any:
    """The smallest value valid for a JSON schema (objects get their required properties)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return minimal_instance((root.get("$defs") or root.get("definitions") or {}).get(name, {}), root)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return minimal_instance(schema[key][0], root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: minimal_instance(props[name], root) for name in schema.get("required", []) if name in props}
    if kind == "array":
        return [minimal_instance(schema.get("items") or {}, root) for _ in range(schema.get("minItems", 0))]
    return {"string": LABEL, "integer": 1, "number": 1.0, "boolean": False, "null": None}.get(kind)


# ---------------------------------------------------------------------------------------------------------------
# Running


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until cancelled. Port 0 picks a free port; the ready line names the real one."""
    runner = web.AppRunner(Simulator(config).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    port = site._server.sockets[0].getsockname()[1] if port == 0 else port
    print(f"{READY_LINE} http://{host}:{port}/v1 (model {config.model})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class SimulatorProcess:
    """`matterflow sim` in its own process on a free loopback port (tests, demo, benchmarks)."""

    def __init__(self, *, name: str = "sim", **options: Any) -> None:
        self.name = name
        argv = [sys.executable, "-m", "matterflow", "sim", "--port", "0"]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            values = value if isinstance(value, list | tuple) else [value]
            if isinstance(value, list | tuple):
                argv += [flag, ",".join(map(str, values))]
            else:
                argv += [flag, str(value)]
        self._process = ManagedProcess(argv, ready_line=READY_LINE, timeout_s=60)
        self.base_url = ""

    def start(self) -> SimulatorProcess:
        self._process.start()
        line = next(line for line in self._process.output if READY_LINE in line)
        self.base_url = line.split(READY_LINE, 1)[1].split()[0]
        return self

    def stop(self) -> None:
        self._process.stop()

    def kill(self) -> None:
        self._process.kill()

    def endpoint(self, **overrides: Any) -> dict:
        """An `llm_pool` endpoint entry for this simulator."""
        return {"name": self.name, "base_url": self.base_url, "api_key": "sim-key", "model": "llama-3-70b-sim",
                "max_concurrency": 64, **overrides}

    def _control(self, method: str, path: str, payload: dict | None = None) -> dict:
        response = httpx.request(method, self.base_url.removesuffix("/v1") + path, json=payload, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict:
        return self._control("GET", "/sim/stats")

    def configure(self, **changes: Any) -> dict:
        return self._control("POST", "/sim/config", changes)

    def reset(self) -> dict:
        return self._control("POST", "/sim/reset")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
