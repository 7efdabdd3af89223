"""The draft generators: OpenAI against a fake API at the HTTP level (the openai client's httpx2 transport),
the offline one, and the choice between them."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from planbus.drafting import Draft
from planbus.errors import ConfigurationError, GenerationError
from planbus.llm.drafts import (
    OFFLINE_MODEL,
    OfflineDraftGenerator,
    OpenAIDraftGenerator,
    draft_generator_for,
    make_draft_generator,
)
from planbus.settings import Settings
from support.drafts import STEP, VALID_DRAFT, draft_input
from support.openai_fakes import FakeOpenAI, api_error, completion, timeout

HOSTS = frozenset({"ref.supabase.co"})
PROOF = "https://ref.supabase.co/storage/v1/object/sign/proofs/chat.png?token=eyJhbGciOi"
TODAY = date(2026, 11, 28)
BAD_PROOF_URLS = [
    "http://ref.supabase.co/storage/v1/object/public/proofs/chat.png",
    "https://ref.supabase.co/" + "a" * 2048,
    "https://evil.example/chat.png",
    "https://user:secret@ref.supabase.co/chat.png",
    "not a url",
    "javascript:alert(document.cookie)",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==",
]


def generator(fake: FakeOpenAI, **options: Any) -> OpenAIDraftGenerator:
    return OpenAIDraftGenerator(
        api_key="sk-test-key",
        model="gpt-5-mini",
        base_url="https://llm.example.test/v1",
        timeout=options.pop("timeout", 90.0),
        proof_url_hosts=HOSTS,
        http_client=fake.client(),
        **options,
    )


def failure(fake: FakeOpenAI, **options: Any) -> GenerationError:
    with pytest.raises(GenerationError) as caught:
        generator(fake, **options).generate(draft_input(), today=TODAY)
    return caught.value


def test_the_request_carries_the_step_the_lead_and_the_screenshot_as_an_image_part() -> None:
    fake = FakeOpenAI(completion(VALID_DRAFT))
    generator(fake).generate(
        draft_input(proof_url=PROOF, instructions="Mention the webinar on Thursday."), today=TODAY
    )

    (request,) = fake.requests
    assert str(request.url) == "https://llm.example.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-key"
    assert request.extensions["timeout"]["read"] == 90.0
    body = json.loads(request.content)
    assert body["model"] == "gpt-5-mini"
    system, user = body["messages"]
    assert system["role"] == "system" and "one ready-to-send message" in system["content"]
    assert user["role"] == "user"
    text, image = user["content"]
    assert image == {"type": "image_url", "image_url": {"url": PROOF}}
    assert text["type"] == "text"
    for fact in (
        "Today is 2026-11-28.",
        "- Name: Ada Lovelace",
        "- Company: Analytical Engines Ltd",
        "- Title: Head of Research",
        "Wants to automate Bernoulli tables.",
        "Step 2 of the plan",
        "- Channel: Email",
        f"- Action: {STEP.action}",
        f"- Goal: {STEP.goal}",
        STEP.message_draft,
        '"""\nMention the webinar on Thursday.\n"""',
        "A screenshot of the conversation so far is attached.",
    ):
        assert fact in text["text"]


def test_the_request_asks_for_the_draft_schema_as_strict_structured_output() -> None:
    fake = FakeOpenAI(completion(VALID_DRAFT))
    generator(fake).generate(draft_input(), today=TODAY)

    response_format = fake.bodies()[0]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "MessageDraft"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert schema["required"] == ["text", "channel", "rationale"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["channel"]["enum"][:3] == ["telegram", "email", "linkedin"]
    # Lengths travel as descriptions: strict structured outputs reject string length keywords.
    assert "maxLength" not in json.dumps(schema)
    assert "at most 1200 characters" in schema["properties"]["text"]["description"]


def test_without_a_proof_url_no_image_part_is_sent() -> None:
    fake = FakeOpenAI(completion(VALID_DRAFT))
    generator(fake).generate(draft_input(instructions=None), today=TODAY)

    (_, user) = fake.bodies()[0]["messages"]
    (text,) = user["content"]
    assert text["type"] == "text"
    assert "image_url" not in json.dumps(fake.bodies()[0])
    assert "No screenshot of the conversation is attached." in text["text"]


def test_a_valid_answer_becomes_a_draft_with_its_provenance() -> None:
    made = generator(FakeOpenAI(completion(VALID_DRAFT, model="gpt-5-mini-2026-08-07")))
    generation = made.generate(draft_input(proof_url=PROOF), today=TODAY)

    assert generation.draft == Draft.model_validate(VALID_DRAFT)
    assert type(generation.draft) is Draft
    assert generation.model == "gpt-5-mini-2026-08-07"
    assert generation.usage is not None
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens) == (812, 345)
    assert generation.response_id == "chatcmpl-test-1"
    assert made.name == "openai"


def test_a_refusal_fails_permanently_with_the_models_words() -> None:
    error = failure(FakeOpenAI(completion(None, refusal="I can't help with that request.")))

    assert not error.retryable
    assert str(error) == "the model refused to write a draft: I can't help with that request."


def test_an_answer_that_is_not_json_fails_permanently() -> None:
    fake = FakeOpenAI(completion('{"text": "Hi Ada'))
    error = failure(fake)

    assert not error.retryable
    assert str(error).startswith("the model's answer is not a valid draft: Invalid JSON")
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"text": "x" * 1201}, "text: String should have at most 1200 characters"),
        ({"rationale": "y" * 201}, "rationale: String should have at most 200 characters"),
        ({"channel": "fax"}, "channel: Input should be 'telegram'"),
        ({"text": "   "}, "text: String should have at least 1 character"),
    ],
)
def test_a_draft_out_of_bounds_fails_permanently_naming_the_field(
    changes: dict[str, Any], complaint: str
) -> None:
    error = failure(FakeOpenAI(completion({**VALID_DRAFT, **changes})))

    assert not error.retryable
    assert str(error).startswith("the model's answer is not a valid draft: ")
    assert complaint in str(error)


def test_a_cut_off_answer_fails_permanently() -> None:
    error = failure(FakeOpenAI(completion('{"text": "', finish_reason="length")))

    assert not error.retryable
    assert str(error) == "the answer was cut off at the token limit before the draft was complete"


def test_a_content_filter_stop_fails_permanently() -> None:
    error = failure(FakeOpenAI(completion(None, finish_reason="content_filter")))

    assert not error.retryable
    assert str(error) == "OpenAI's content filter stopped the answer"


def test_a_timeout_is_retryable_and_says_how_long_it_waited() -> None:
    fake = FakeOpenAI(timeout)
    error = failure(fake, timeout=7.5)

    assert error.retryable
    assert str(error) == "OpenAI did not answer within 7.5 s"
    assert len(fake.requests) == 1


def test_a_connection_failure_is_retryable() -> None:
    error = failure(FakeOpenAI(httpx2.ConnectError("connection refused")))

    assert error.retryable
    assert str(error).startswith("could not reach OpenAI: Connection error.")


@pytest.mark.parametrize(
    ("answer", "retryable", "message"),
    [
        (api_error(429, "Rate limit reached", code="rate_limit_exceeded"), True, "OpenAI answered 429"),
        (api_error(500, "boom"), True, "OpenAI answered 500: boom"),
        (api_error(503, "The server is overloaded"), True, "OpenAI answered 503: The server is overloaded"),
        (
            api_error(429, "You exceeded your current quota", code="insufficient_quota"),
            False,
            "current quota",
        ),
        (api_error(401, "Incorrect API key provided", code="invalid_api_key"), False, "OpenAI answered 401"),
        (api_error(400, "Invalid image URL"), False, "OpenAI answered 400: Invalid image URL"),
    ],
)
def test_api_errors_are_classified_as_for_plans_with_one_call_per_attempt(
    answer: httpx2.Response, retryable: bool, message: str
) -> None:
    fake = FakeOpenAI(answer)
    error = failure(fake)

    assert error.retryable is retryable
    assert message in str(error)
    # The request's next attempt is the retry: one attempt never calls twice.
    assert len(fake.requests) == 1


@pytest.mark.parametrize("url", BAD_PROOF_URLS)
def test_a_bad_proof_url_fails_for_good_before_any_call(url: str) -> None:
    fake = FakeOpenAI(completion(VALID_DRAFT))
    with pytest.raises(GenerationError, match=re.escape("proof_url ")) as caught:
        generator(fake).generate(draft_input(proof_url=url), today=TODAY)

    assert not caught.value.retryable
    assert fake.requests == []


@pytest.mark.parametrize("url", BAD_PROOF_URLS)
def test_the_offline_generator_refuses_a_bad_proof_url_too(url: str) -> None:
    with pytest.raises(GenerationError, match=re.escape("proof_url ")) as caught:
        OfflineDraftGenerator(proof_url_hosts=HOSTS).generate(draft_input(proof_url=url), today=TODAY)
    assert not caught.value.retryable


def test_the_offline_draft_is_the_steps_own_draft_every_time() -> None:
    offline = OfflineDraftGenerator(proof_url_hosts=HOSTS)
    first = offline.generate(draft_input(), today=TODAY)
    again = OfflineDraftGenerator(proof_url_hosts=HOSTS).generate(draft_input(), today=TODAY)

    assert first == again
    assert first.draft == Draft(
        text=STEP.message_draft,
        channel="email",
        rationale="Step 2's draft from the plan, as written (offline generator).",
    )
    assert (first.model, first.usage, first.response_id) == (OFFLINE_MODEL, None, None)
    assert offline.name == "offline"


@pytest.mark.parametrize(
    ("changes", "rationale"),
    [
        (
            {"instructions": "Shorter, please."},
            "Step 2's draft from the plan, unchanged: the offline generator does not apply the instructions "
            "given.",
        ),
        (
            {"proof_url": PROOF},
            "Step 2's draft from the plan, unchanged: the offline generator does not read the screenshot.",
        ),
        (
            {"proof_url": PROOF, "instructions": "Shorter, please."},
            "Step 2's draft from the plan, unchanged: the offline generator does not apply the instructions "
            "given or read the screenshot.",
        ),
        ({"instructions": "   "}, "Step 2's draft from the plan, as written (offline generator)."),
    ],
)
def test_the_offline_draft_says_what_it_did_not_use(changes: dict[str, Any], rationale: str) -> None:
    generation = OfflineDraftGenerator(proof_url_hosts=HOSTS).generate(draft_input(**changes), today=TODAY)

    assert generation.draft.rationale == rationale
    assert generation.draft.text == STEP.message_draft


def test_without_an_api_key_drafts_are_offline() -> None:
    assert isinstance(make_draft_generator(Settings()), OfflineDraftGenerator)
    chosen = Settings(openai_api_key=SecretStr("sk"), plan_generator="offline")
    assert isinstance(make_draft_generator(chosen), OfflineDraftGenerator)


def test_with_an_api_key_drafts_use_the_draft_model_and_timeout() -> None:
    settings = Settings(
        openai_api_key=SecretStr("sk-live"),
        openai_model="gpt-5",
        openai_timeout=30,
        draft_openai_model="gpt-5-vision-test",
        draft_openai_timeout=75,
    )
    made = make_draft_generator(settings)

    assert isinstance(made, OpenAIDraftGenerator)
    assert (made.model, made.timeout) == ("gpt-5-vision-test", 75)


def test_the_settings_direct_the_request_and_allow_the_supabase_storage_host() -> None:
    fake = FakeOpenAI(completion(VALID_DRAFT))
    settings = Settings(
        openai_api_key=SecretStr("sk-live"),
        openai_base_url="http://localhost:11434/v1",
        supabase_url="https://ref.supabase.co",
    )
    make_draft_generator(settings, http_client=fake.client()).generate(
        draft_input(proof_url=PROOF), today=TODAY
    )

    assert str(fake.requests[0].url) == "http://localhost:11434/v1/chat/completions"
    assert fake.bodies()[0]["model"] == "gpt-5-mini"


def test_choosing_openai_without_a_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="PLAN_GENERATOR=openai needs OPENAI_API_KEY"):
        make_draft_generator(Settings(plan_generator="openai"))


def test_the_process_keeps_one_draft_generator_per_settings() -> None:
    settings = Settings()
    first = draft_generator_for(settings)

    assert draft_generator_for(settings) is first
    assert draft_generator_for(Settings()) is not first
