"""The committed JSON Schemas of what planbus stores for the Mini App to read, generated from the models.

    schemas/plan_result.schema.json   plan_requests.result of a completed request (PlanResult)
    schemas/plan.schema.json          leads.plan, the lead's current plan (Plan)
    schemas/draft_result.schema.json  draft_requests.result of a completed request (DraftResult)

Regenerate after changing planbus.models with `python -m planbus.schema`; `python -m planbus.schema
--check` exits 1 when a committed file is stale (the test suite runs the same check).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from planbus.drafting import DraftResult
from planbus.models import Plan, PlanResult

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "plan_result.schema.json": PlanResult,
    "plan.schema.json": Plan,
    "draft_result.schema.json": DraftResult,
}


def default_schemas_dir() -> Path:
    """The repository's schemas/ folder (functions/planbus/ -> ../../schemas)."""
    return Path(__file__).resolve().parents[2] / "schemas"


def schema_documents() -> dict[str, str]:
    """Each committed file's name and exact text, as the models define it today."""
    documents = {}
    for name, model in SCHEMA_FILES.items():
        schema = {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(mode="serialization")}
        documents[name] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return documents


def stale_files(folder: Path) -> list[str]:
    """Names of the files in `folder` that are missing or differ from the models."""
    return [
        name
        for name, text in schema_documents().items()
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text
    ]


def write(folder: Path) -> list[str]:
    """Write every schema file into `folder`; returns the names that changed."""
    changed = stale_files(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in schema_documents().items():
        if name in changed:
            (folder / name).write_text(text, encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m planbus.schema", description="write the committed JSON Schemas"
    )
    parser.add_argument("--dir", type=Path, default=default_schemas_dir(), help="where the schemas live")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed schema is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for name in stale:
            print(f"stale: {args.dir / name} (run python -m planbus.schema)", file=sys.stderr)
        return 1 if stale else 0
    for name in write(args.dir):
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
