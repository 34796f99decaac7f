"""JSON Schemas of the message contract, generated from the models so they cannot drift.

``schemas/`` holds the checked-in output of :func:`generate`; a test fails when the two differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from worker.messages import ModifyRequest, RemoveRequest, Request, ResultEvent

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "urn:dhcp-failover-worker:schemas:"


def _schema(model: type[BaseModel] | TypeAdapter[Any], name: str, title: str) -> dict[str, Any]:
    if isinstance(model, TypeAdapter):
        body = model.json_schema(by_alias=True, mode="validation")
    else:
        body = model.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": DRAFT, "$id": BASE_ID + name, **body, "title": title}


def generate() -> dict[str, dict[str, Any]]:
    """File name -> schema for every message other systems publish or consume."""
    return {
        "modify-request.schema.json": _schema(
            ModifyRequest, "modify-request", "ModifyDHCPFailoverRelationship request"
        ),
        "remove-request.schema.json": _schema(
            RemoveRequest, "remove-request", "RemoveDHCPFailoverRelationships request"
        ),
        "request.schema.json": _schema(
            TypeAdapter(Request), "request", "Failover change request (modify or remove)"
        ),
        "result-event.schema.json": _schema(
            ResultEvent, "result-event", "Result event (CloudEvents 1.0, structured JSON)"
        ),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generate().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
