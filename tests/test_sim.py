"""The simulator, driven through the real `openai` SDK over HTTP, as any OpenAI-compatible server would be."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from f.matter.analysis import RESPONSE_FORMAT, WindowAnalysis, build_messages
from f.matter.documents import parse_ocr
from f.matter.models import Window
from matterflow.sim import LABEL
from matterflow.synth import synthetic_layout_bytes

DOCUMENT = parse_ocr(synthetic_layout_bytes(6, words_per_page=120, seed=5))


def window_messages(owned: tuple[int, int] = (3, 4), read: tuple[int, int] = (2, 5)) -> list[dict]:
    window = Window(index=1, first=read[0], last=read[1], owned_first=owned[0], owned_last=owned[1], pages=read[1] - read[0] + 1, estimated_tokens=1)
    pages = [p for p in DOCUMENT.pages if read[0] <= p.number <= read[1]]
    return build_messages(window, pages, {})


def client(sim, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sim-key", max_retries=0, **kwargs)


def ask(sim, messages=None, **kwargs):
    with client(sim) as api:
        return api.chat.completions.create(
            model="llama-3-70b-sim", messages=messages or window_messages(), response_format=RESPONSE_FORMAT, max_tokens=2048, **kwargs
        )


def test_models_lists_the_simulated_model(simulators: list) -> None:
    with client(simulators[0]) as api:
        assert [m.id for m in api.models.list().data] == ["llama-3-70b-sim"]


def test_answers_are_schema_valid_labelled_and_drawn_from_owned_pages_only(simulators: list) -> None:
    response = ask(simulators[0])
    analysis = WindowAnalysis.model_validate_json(response.choices[0].message.content)
    assert [p.page for p in analysis.pages] == [3, 4]
    assert all(p.summary.startswith(LABEL) for p in analysis.pages)
    cited = {page for item in analysis.entities + analysis.dates + analysis.amounts + analysis.issues for page in item.pages}
    assert cited <= {3, 4}
    owned_text = " ".join(p.text for p in DOCUMENT.pages if p.number in (3, 4))
    assert analysis.amounts and all(a.text in owned_text for a in analysis.amounts)
    assert analysis.entities and all(e.name.split()[0] in owned_text for e in analysis.entities)
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


def test_the_same_prompt_gets_the_same_answer_on_any_replica(simulators: list) -> None:
    answers = {ask(sim).choices[0].message.content for sim in simulators}
    assert len(answers) == 1


def test_streaming_yields_the_same_answer_and_usage(simulators: list) -> None:
    plain = ask(simulators[0]).choices[0].message.content
    with client(simulators[0]) as api:
        chunks = list(
            api.chat.completions.create(
                model="llama-3-70b-sim", messages=window_messages(), response_format=RESPONSE_FORMAT, max_tokens=2048,
                stream=True, stream_options={"include_usage": True},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0


def test_fault_script_429_carries_retry_after_then_answers(simulators: list) -> None:
    sim = simulators[0]
    sim.configure(fault_script=["429", "ok"], retry_after_s=3.0)
    with pytest.raises(openai.RateLimitError) as info:
        ask(sim)
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.response.headers["retry-after-ms"] == "3000"
    assert ask(sim).choices[0].finish_reason == "stop"
    assert sim.stats()["faults"] == {"429": 1}


@pytest.mark.parametrize("status", ["500", "502", "503"])
def test_server_errors_by_script(simulators: list, status: str) -> None:
    simulators[0].configure(fault_script=[status])
    with pytest.raises(openai.InternalServerError) as info:
        ask(simulators[0])
    assert info.value.status_code == int(status)


def test_truncated_and_malformed_answers(simulators: list) -> None:
    sim = simulators[0]
    sim.configure(fault_script=["truncated", "malformed"])
    truncated = ask(sim).choices[0]
    assert truncated.finish_reason == "length"
    malformed = ask(sim).choices[0]
    assert malformed.finish_reason == "stop"
    for text in (truncated.message.content, malformed.message.content):
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)


def test_connection_reset_and_hang(simulators: list) -> None:
    sim = simulators[0]
    sim.configure(fault_script=["reset", "timeout"], hang_s=30.0)
    with pytest.raises(openai.APIConnectionError):
        ask(sim)
    with client(sim, timeout=0.5) as api, pytest.raises(openai.APITimeoutError):
        api.chat.completions.create(model="m", messages=window_messages(), max_tokens=10)


def test_requests_beyond_capacity_queue(simulators: list) -> None:
    sim = simulators[0]
    sim.configure(capacity=2, latency_ms=150.0)

    async def many() -> None:
        async_client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        async with async_client:
            await asyncio.gather(*(async_client.chat.completions.create(model="m", messages=window_messages(), max_tokens=50) for _ in range(8)))

    asyncio.run(many())
    stats = sim.stats()
    assert stats["max_active"] == 2
    assert stats["max_queued"] >= 1
    assert stats["ok"] == 8


def test_rpm_limit_and_down_switch(simulators: list) -> None:
    sim = simulators[0]
    sim.configure(rpm=2)  # bursts of one request, refilled every 30 s
    ask(sim)
    with pytest.raises(openai.RateLimitError):
        ask(sim)
    sim.configure(rpm=None, down=True)
    with pytest.raises(openai.InternalServerError):
        ask(sim)


def test_prompt_over_context_is_a_400_naming_the_limit(simulators: list) -> None:
    simulators[0].configure(context_tokens=1500)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1500 tokens"):
        ask(simulators[0])


def test_other_schemas_get_a_minimal_valid_instance(simulators: list) -> None:
    schema = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}, "score": {"type": "integer"}}, "required": ["verdict", "score"]}
    with client(simulators[0]) as api:
        response = api.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Is this a lease?"}], max_tokens=50,
            response_format={"type": "json_schema", "json_schema": {"name": "other", "schema": schema}},
        )
    assert json.loads(response.choices[0].message.content) == {"verdict": "yes", "score": 1}


def test_unknown_fault_names_are_refused(simulators: list) -> None:
    import httpx

    with pytest.raises(httpx.HTTPStatusError):
        simulators[0].configure(faults=["meteor"])


def test_the_fixture_resets_every_setting_a_test_can_change() -> None:
    """A setting missing from FAST_SIM would leak from one test into the next through the shared simulators."""
    from dataclasses import fields

    from matterflow.sim import SimConfig
    from tests.conftest import FAST_SIM

    assert set(FAST_SIM) == {f.name for f in fields(SimConfig)} - {"model", "seed"}
