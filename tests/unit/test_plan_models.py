"""The plan, result and webhook payload models, and the committed JSON Schema generated from them."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from planbus import schema
from planbus.kinds import KINDS, AnyKind
from planbus.models import MAX_DAY_OFFSET, MAX_MESSAGE, MAX_STEPS, Plan, PlanResult, WebhookPayload
from support.openai_fakes import VALID_PLAN


def plan_with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID_PLAN)
    step_changes = changes.pop("step", None)
    if step_changes:
        data["steps"][0].update(step_changes)
    data.update(changes)
    return data


def test_a_valid_plan_is_accepted_as_is() -> None:
    plan = Plan.model_validate(VALID_PLAN)
    assert plan.model_dump() == VALID_PLAN


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (plan_with(steps=VALID_PLAN["steps"][:1]), "at least 2 items"),
        (plan_with(steps=VALID_PLAN["steps"] * 4), f"at most {MAX_STEPS} items"),
        (plan_with(step={"day_offset": -1}), "greater than or equal to 0"),
        (plan_with(step={"day_offset": MAX_DAY_OFFSET + 1}), f"less than or equal to {MAX_DAY_OFFSET}"),
        (plan_with(step={"channel": "carrier pigeon"}), "Input should be 'telegram'"),
        (plan_with(step={"message_draft": "x" * (MAX_MESSAGE + 1)}), f"at most {MAX_MESSAGE} characters"),
        (plan_with(step={"action": "   "}), "at least 1 character"),
        (plan_with(summary=""), "at least 1 character"),
        (plan_with(step={"priority": "high"}), "Extra inputs are not permitted"),
        (
            plan_with(step={"day_offset": 9}),
            "steps must be in order: step 2 is on day 3, before step 1 on day 9",
        ),
    ],
)
def test_a_plan_outside_its_bounds_is_refused_with_the_reason(data: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Plan.model_validate(data)


def test_steps_on_the_same_day_are_in_order() -> None:
    data = plan_with()
    data["steps"][1]["day_offset"] = 0
    assert Plan.model_validate(data).steps[1].day_offset == 0


def test_the_result_round_trips_through_json() -> None:
    result = PlanResult(
        plan=Plan.model_validate(VALID_PLAN),
        generator="offline",
        model="planbus-offline-templates-1",
        usage=None,
        latency_ms=3,
        generated_at=datetime(2026, 11, 28, 9, 30, tzinfo=UTC),
        attempt=1,
    )
    stored = json.loads(result.model_dump_json())
    assert stored["schema_version"] == 1
    assert stored["generator"] == "offline" and stored["usage"] is None
    assert PlanResult.model_validate(stored) == result


def insert(record: Any, **fields: Any) -> dict[str, Any]:
    return {
        "type": "INSERT",
        "table": "plan_requests",
        "schema": "public",
        "record": record,
        "old_record": None,
        **fields,
    }


def parse(body: Any, table: str = "plan_requests") -> WebhookPayload:
    """The payload as the webhook of public.<table> reads it."""
    return WebhookPayload.for_table(json.dumps(body), table)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_an_insert_on_a_kinds_table_names_the_request(kind: AnyKind) -> None:
    request_id = str(uuid.uuid4())
    event = parse(
        insert({"id": request_id, "status": "pending"}, table=kind.table, user_id="ignored"), kind.table
    )
    assert event.is_insert_on(kind.table)
    assert event.request_id_on(kind.table) == request_id
    assert [other.table for other in KINDS if event.is_insert_on(other.table)] == [kind.table]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (insert({"status": "pending"}), "must carry record.id"),
        (insert({"id": 42}), "must carry record.id"),
        (insert({"id": "not-a-uuid"}), "record.id is not a UUID: 'not-a-uuid'"),
        # Forms Python's UUID() takes but PostgreSQL's uuid type refuses: a 400 here, not a 500 later.
        (insert({"id": "urn:uuid:12345678-1234-5678-1234-567812345678"}), "is not a UUID"),
        (insert({"id": "{12345678-1234-5678-1234-567812345678}"}), "is not a UUID"),
        (insert(None), "must carry record.id"),
        (insert([1, 2]), "record"),
        ({"type": "INSERT", "schema": "public", "record": {}}, "table"),
        ({"type": 1, "table": "plan_requests", "schema": "public", "record": {}}, "type"),
        ({"type": "INSERT", "table": "plan_requests", "record": {}}, "schema"),
    ],
)
def test_a_body_that_is_not_a_webhook_payload_is_refused(body: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        parse(body)


@pytest.mark.parametrize(
    "body",
    [
        {
            "type": "UPDATE",
            "table": "plan_requests",
            "schema": "public",
            "record": {"id": "x"},
            "old_record": {},
        },
        {"type": "DELETE", "table": "plan_requests", "schema": "public", "record": None, "old_record": {}},
        insert({"id": str(uuid.uuid4())}, table="leads"),
        insert({"id": str(uuid.uuid4())}, schema="archive"),
    ],
)
def test_other_events_are_understood_but_not_acted_on(body: dict[str, Any]) -> None:
    assert not parse(body).is_insert_on("plan_requests")


def test_a_delete_names_the_request_from_the_old_record() -> None:
    request_id = str(uuid.uuid4())
    body = {"type": "DELETE", "table": "plan_requests", "schema": "public", "record": None}
    event = parse({**body, "old_record": {"id": request_id}})
    assert event.request_id_on("plan_requests") == request_id


def test_an_event_on_another_table_names_no_request() -> None:
    event = parse(insert({"id": str(uuid.uuid4())}, table="leads"))
    assert event.request_id_on("plan_requests") is None and event.request_id_on("leads") is not None


def test_an_insert_on_another_table_needs_no_id_of_this_kinds_webhook() -> None:
    event = parse(insert({"id": 7}, table="invoices"))
    assert not event.is_insert_on("plan_requests") and event.request_id_on("plan_requests") is None


def test_the_committed_json_schemas_match_the_models() -> None:
    assert schema.stale_files(schema.default_schemas_dir()) == [], "run: python -m planbus.schema"


def test_the_schema_check_notices_a_stale_file_and_regenerating_fixes_it(tmp_path: Path) -> None:
    assert schema.main(["--dir", str(tmp_path)]) == 0
    (tmp_path / "plan.schema.json").write_text("{}\n", encoding="utf-8")

    assert schema.main(["--dir", str(tmp_path), "--check"]) == 1
    assert schema.write(tmp_path) == ["plan.schema.json"]
    assert schema.main(["--dir", str(tmp_path), "--check"]) == 0


def test_the_result_schema_documents_the_plan_and_its_bounds() -> None:
    document = json.loads((schema.default_schemas_dir() / "plan_result.schema.json").read_text())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["properties"]["plan"] == {"$ref": "#/$defs/Plan"}
    assert document["properties"]["generator"]["enum"] == ["openai", "offline"]
    assert set(document["required"]) == set(PlanResult.model_fields)
    step = document["$defs"]["PlanStep"]["properties"]
    assert step["message_draft"]["maxLength"] == MAX_MESSAGE
    assert document["$defs"]["Plan"]["properties"]["steps"]["maxItems"] == MAX_STEPS
