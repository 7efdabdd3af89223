"""The OpenAI generator against a fake API at the HTTP level (the openai client's own httpx2 transport)."""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from datetime import date
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from planbus.errors import ConfigurationError, GenerationError
from planbus.llm import make_generator
from planbus.llm.offline import OfflineGenerator
from planbus.llm.openai_generator import OpenAIGenerator
from planbus.models import LeadFacts, Plan
from planbus.settings import Settings
from support.openai_fakes import VALID_PLAN, FakeOpenAI, api_error, completion, timeout

LEAD = LeadFacts(
    id=uuid.uuid4(),
    full_name="Ada Lovelace",
    company="Analytical Engines Ltd",
    title="Head of Research",
    notes="Met at the Royal Society. Wants to automate Bernoulli tables.",
    status="contacted",
)
TODAY = date(2026, 11, 28)


def generator(fake: FakeOpenAI, **options: Any) -> tuple[OpenAIGenerator, list[float]]:
    slept: list[float] = []
    made = OpenAIGenerator(
        api_key="sk-test-key",
        model="gpt-5-mini",
        base_url="https://llm.example.test/v1",
        timeout=options.pop("timeout", 20.0),
        http_client=fake.client(),
        sleep=slept.append,
        **options,
    )
    return made, slept


def failure(fake: FakeOpenAI, **options: Any) -> GenerationError:
    made, _ = generator(fake, **options)
    with pytest.raises(GenerationError) as caught:
        made.generate(LEAD, today=TODAY)
    return caught.value


def test_the_request_carries_the_plan_schema_as_strict_response_format() -> None:
    fake = FakeOpenAI(completion(VALID_PLAN))
    made, _ = generator(fake)
    made.generate(LEAD, today=TODAY)

    (request,) = fake.requests
    assert str(request.url) == "https://llm.example.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-key"
    body = json.loads(request.content)
    assert body["model"] == "gpt-5-mini"
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert schema["required"] == ["summary", "steps"]
    assert schema["additionalProperties"] is False
    step = schema["$defs"]["PlanStep"]
    assert step["required"] == ["day_offset", "channel", "action", "message_draft", "goal"]
    assert step["properties"]["channel"]["enum"][:3] == ["telegram", "email", "linkedin"]
    assert step["properties"]["day_offset"]["maximum"] == 90
    # Lengths travel as descriptions: strict structured outputs reject string length keywords.
    assert "maxLength" not in json.dumps(schema)
    assert "at most 1200 characters" in step["properties"]["message_draft"]["description"]


def test_the_request_carries_the_lead_facts_and_previous_plan() -> None:
    fake = FakeOpenAI(completion(VALID_PLAN))
    made, _ = generator(fake)
    lead = LEAD.model_copy(update={"plan": {"summary": "Earlier: invite to the salon", "steps": []}})
    made.generate(lead, today=TODAY)

    system, user = json.loads(fake.requests[0].content)["messages"]
    assert system["role"] == "system" and "engagement plan" in system["content"]
    assert user["role"] == "user"
    for fact in (
        "Ada Lovelace",
        "Analytical Engines Ltd",
        "Head of Research",
        "contacted",
        "Wants to automate Bernoulli tables.",
        "Earlier: invite to the salon",
        "2026-11-28",
    ):
        assert fact in user["content"]


def test_a_valid_answer_becomes_a_plan_with_its_provenance() -> None:
    made, _ = generator(FakeOpenAI(completion(VALID_PLAN, model="gpt-5-mini-2026-08-07")))
    generation = made.generate(LEAD, today=TODAY)

    assert generation.plan == Plan.model_validate(VALID_PLAN)
    assert type(generation.plan) is Plan
    assert generation.model == "gpt-5-mini-2026-08-07"
    assert generation.usage is not None
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens) == (812, 345)
    assert generation.usage.total_tokens == 1157
    assert generation.response_id == "chatcmpl-test-1"
    assert made.name == "openai"


def test_a_persistent_rate_limit_costs_one_call_and_carries_the_servers_retry_after() -> None:
    fake = FakeOpenAI(
        api_error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"retry-after": "30"})
    )
    made, slept = generator(fake)
    with pytest.raises(GenerationError) as caught:
        made.generate(LEAD, today=TODAY)

    assert len(fake.requests) == 1
    assert slept == []
    assert caught.value.retryable
    assert caught.value.retry_after == 30
    assert str(caught.value) == "OpenAI answered 429: Rate limit reached (retry after 30 s)"


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_a_persistently_failing_api_is_called_once_per_attempt(status: int) -> None:
    fake = FakeOpenAI(api_error(status, "The server is overloaded"))
    made, slept = generator(fake, backoff=0.25)
    with pytest.raises(GenerationError) as caught:
        made.generate(LEAD, today=TODAY)

    assert len(fake.requests) == 1
    assert slept == []
    assert caught.value.retryable
    assert caught.value.retry_after is None
    assert str(caught.value) == f"OpenAI answered {status}: The server is overloaded"


def test_a_503_carries_its_retry_after_in_milliseconds_in_preference_to_seconds() -> None:
    fake = FakeOpenAI(api_error(503, "Overloaded", headers={"retry-after-ms": "2500", "retry-after": "1"}))
    error = failure(fake)

    assert error.retry_after == 2.5
    assert str(error) == "OpenAI answered 503: Overloaded (retry after 2.5 s)"
    assert len(fake.requests) == 1


def test_a_short_retry_after_is_waited_out_once_inside_the_call() -> None:
    fake = FakeOpenAI(
        api_error(429, "Rate limit reached for tokens", headers={"retry-after-ms": "300"}),
        completion(VALID_PLAN),
    )
    made, slept = generator(fake)

    generation = made.generate(LEAD, today=TODAY)

    assert generation.plan.steps[0].channel == "telegram"
    assert len(fake.requests) == 2
    assert slept == [0.3]


def test_a_persistent_short_retry_after_costs_two_calls_and_is_carried() -> None:
    fake = FakeOpenAI(api_error(429, "Rate limit reached for tokens", headers={"retry-after-ms": "300"}))
    made, slept = generator(fake)
    with pytest.raises(GenerationError) as caught:
        made.generate(LEAD, today=TODAY)

    assert len(fake.requests) == 2
    assert slept == [0.3]
    assert caught.value.retry_after == 0.3
    assert str(caught.value) == (
        "OpenAI answered 429: Rate limit reached for tokens (retry after 0.3 s) (after 2 tries)"
    )


def test_a_retry_after_given_as_an_http_date_counts_from_now() -> None:
    at = email.utils.formatdate(time.time() + 120, usegmt=True)
    error = failure(FakeOpenAI(api_error(429, "Slow down", headers={"retry-after": at})))

    assert error.retry_after is not None
    assert 110 <= error.retry_after <= 121


def test_a_retry_after_longer_than_an_hour_is_capped_and_says_what_was_asked() -> None:
    error = failure(FakeOpenAI(api_error(429, "Slow down", headers={"retry-after": "7200"})))

    assert error.retry_after == 3600
    assert str(error) == "OpenAI answered 429: Slow down (retry after 3600 s; the server asked for 7200 s)"


@pytest.mark.parametrize("value", ["soon", "-5", "nan", ""])
def test_an_unreadable_retry_after_is_ignored(value: str) -> None:
    error = failure(FakeOpenAI(api_error(429, "Slow down", headers={"retry-after": value})))

    assert error.retryable
    assert error.retry_after is None
    assert str(error) == "OpenAI answered 429: Slow down"


def test_only_429_and_503_carry_a_retry_after() -> None:
    error = failure(FakeOpenAI(api_error(500, "boom", headers={"retry-after": "30"})))

    assert error.retryable
    assert error.retry_after is None


def test_a_long_api_message_is_clipped_but_keeps_the_retry_after() -> None:
    error = failure(FakeOpenAI(api_error(429, "x" * 2000, headers={"retry-after": "12"})))

    assert len(str(error)) == 500
    assert str(error).endswith("… (retry after 12 s)")


def test_a_connection_error_is_retried_once_after_a_short_pause() -> None:
    fake = FakeOpenAI(httpx2.ConnectError("connection refused"), completion(VALID_PLAN))
    made, slept = generator(fake, backoff=1.0)

    generation = made.generate(LEAD, today=TODAY)

    assert generation.plan.steps[0].channel == "telegram"
    assert len(fake.requests) == 2
    assert len(slept) == 1 and 0.8 <= slept[0] <= 1.2


def test_a_persistent_connection_error_costs_two_calls_then_is_retryable() -> None:
    fake = FakeOpenAI(httpx2.ConnectError("connection refused"))
    error = failure(fake)

    assert len(fake.requests) == 2
    assert error.retryable
    assert error.retry_after is None
    assert str(error).startswith("could not reach OpenAI: Connection error.")
    assert str(error).endswith("(after 2 tries)")


def test_a_timeout_is_retryable_and_says_how_long_it_waited() -> None:
    fake = FakeOpenAI(timeout)
    error = failure(fake, timeout=7.5)

    assert error.retryable
    assert str(error) == "OpenAI did not answer within 7.5 s"
    assert len(fake.requests) == 1


def test_a_connection_failure_is_retryable() -> None:
    fake = FakeOpenAI(httpx2.ConnectError("connection refused"))
    error = failure(fake, max_tries=1)

    assert error.retryable
    assert str(error).startswith("could not reach OpenAI: Connection error.")
    assert len(fake.requests) == 1


def test_no_retry_when_the_pause_would_outlast_the_budget() -> None:
    fake = FakeOpenAI(httpx2.ConnectError("connection refused"))
    error = failure(fake, backoff=30.0, timeout=10.0)

    assert error.retryable
    assert len(fake.requests) == 1


def test_each_try_gets_only_what_is_left_of_the_budget() -> None:
    seen: list[float] = []

    def record_timeout(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.extensions["timeout"]["read"])
        raise httpx2.ConnectError("connection reset", request=request)

    made, _ = generator(FakeOpenAI(record_timeout), timeout=5.0)
    with pytest.raises(GenerationError):
        made.generate(LEAD, today=TODAY)
    assert len(seen) == 2
    assert all(0 < value <= 5.0 for value in seen)
    assert seen == sorted(seen, reverse=True)


def test_a_refusal_fails_permanently_with_the_models_words() -> None:
    error = failure(FakeOpenAI(completion(None, refusal="I can't help with that request.")))

    assert not error.retryable
    assert str(error) == "the model refused to write a plan: I can't help with that request."


def test_an_answer_that_is_not_json_fails_permanently() -> None:
    fake = FakeOpenAI(completion('{"summary": "Open with'))
    error = failure(fake)

    assert not error.retryable
    assert str(error).startswith("the model's answer is not a valid plan: Invalid JSON")
    assert len(fake.requests) == 1


def test_an_answer_outside_the_plan_bounds_fails_permanently_naming_the_field() -> None:
    unordered = {**VALID_PLAN, "steps": list(reversed(VALID_PLAN["steps"]))}
    error = failure(FakeOpenAI(completion(unordered)))

    assert not error.retryable
    assert "steps must be in order: step 2 is on day 3, before step 1 on day 7" in str(error)


def test_a_cut_off_answer_fails_permanently() -> None:
    error = failure(FakeOpenAI(completion('{"summary": "', finish_reason="length")))

    assert not error.retryable
    assert str(error) == "the answer was cut off at the token limit before the plan was complete"


def test_a_content_filter_stop_fails_permanently() -> None:
    error = failure(FakeOpenAI(completion(None, finish_reason="content_filter")))

    assert not error.retryable
    assert str(error) == "OpenAI's content filter stopped the answer"


def test_a_wrong_api_key_fails_permanently_with_the_apis_message() -> None:
    fake = FakeOpenAI(api_error(401, "Incorrect API key provided: sk-te***key.", code="invalid_api_key"))
    error = failure(fake)

    assert not error.retryable
    assert str(error) == "OpenAI answered 401: Incorrect API key provided: sk-te***key."
    assert len(fake.requests) == 1


def test_other_client_errors_fail_permanently() -> None:
    error = failure(FakeOpenAI(api_error(400, "Invalid schema for response_format 'EngagementPlan'")))

    assert not error.retryable
    assert str(error) == "OpenAI answered 400: Invalid schema for response_format 'EngagementPlan'"


def test_an_exhausted_quota_is_not_retried() -> None:
    fake = FakeOpenAI(
        api_error(
            429, "You exceeded your current quota", code="insufficient_quota", headers={"retry-after": "5"}
        )
    )
    error = failure(fake)

    assert not error.retryable
    assert error.retry_after is None
    assert len(fake.requests) == 1


def test_without_an_api_key_the_offline_generator_is_the_default() -> None:
    assert isinstance(make_generator(Settings()), OfflineGenerator)


def test_with_an_api_key_the_openai_generator_uses_the_openai_settings() -> None:
    settings = Settings(
        openai_api_key=SecretStr("sk-live"),
        openai_model="gpt-5",
        openai_base_url="http://localhost:11434/v1",
        openai_timeout=12,
    )
    made = make_generator(settings)

    assert isinstance(made, OpenAIGenerator)
    assert (made.model, made.timeout) == ("gpt-5", 12)


def test_the_openai_base_url_setting_directs_the_requests() -> None:
    fake = FakeOpenAI(completion(VALID_PLAN))
    settings = Settings(openai_api_key=SecretStr("sk-live"), openai_base_url="http://localhost:11434/v1")
    make_generator(settings, http_client=fake.client()).generate(LEAD, today=TODAY)

    assert str(fake.requests[0].url) == "http://localhost:11434/v1/chat/completions"


def test_choosing_openai_without_a_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PLAN_GENERATOR=openai needs OPENAI_API_KEY"):
        make_generator(Settings(plan_generator="openai"))


def test_offline_can_be_chosen_even_with_a_key() -> None:
    assert isinstance(
        make_generator(Settings(openai_api_key=SecretStr("sk"), plan_generator="offline")), OfflineGenerator
    )
