"""docs/asyncapi.yaml is a valid AsyncAPI 3.0.0 document, and it and docs/contract.md say
what the code does.

Validity is checked against the official AsyncAPI 3.0.0 JSON Schema, which the npm package
``@asyncapi/specs`` ships (pinned in package-lock.json, installed by scripts/setup into
node_modules/). Under ``CI=true`` a missing schema fails; elsewhere it skips with the reason.
The drift tests need nothing but the repository: every name, routing key, queue argument and
payload schema of the document, and the contract's settings table and error codes, are
compared with what the worker runs with.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.examples import MODIFY, REMOVE
from worker.consumer.client import REQUEST_CONTENT_TYPE
from worker.consumer.events import APP_ID, EVENT_CONTENT_TYPE, decode_event, event_routing_key
from worker.consumer.intake import UNKNOWN_OPERATION
from worker.consumer.topology import DEAD_LETTER_QUEUE_ARGUMENTS, request_queue_arguments
from worker.errors import WorkerError
from worker.messages import (
    MODIFY_COMMAND,
    REMOVE_COMMAND,
    Operation,
    Outcome,
    event_id,
    event_type,
    routing_key,
)
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = REPO / "docs" / "asyncapi.yaml"
CONTRACT = REPO / "docs" / "contract.md"
SPEC = REPO / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"

Doc = dict[str, Any]


def _defaults() -> Settings:
    """The settings as shipped: field defaults only, whatever this shell's environment says."""
    return Settings.model_construct()


@pytest.fixture(scope="module")
def document() -> Doc:
    doc = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def asyncapi_schema() -> Draft7Validator:
    """The official schema: draft-07, with every definition it bundles registered by its
    ``$id`` so nothing is fetched."""
    if not SPEC.is_file():
        reason = f"{SPEC.relative_to(REPO)} is missing: scripts/setup installs it (npm ci)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the AsyncAPI check must run, not skip)")
        pytest.skip(reason)
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resources(
        (uri, Resource.from_contents(body, default_specification=DRAFT7))
        for uri, body in spec["definitions"].items()
    )
    return Draft7Validator(spec, registry=registry)


def _problems(validator: Draft7Validator, doc: Doc) -> list[str]:
    """Each error where it is most precise (inside the ``oneOf`` branches the schema uses)."""
    found = []
    for error in validator.iter_errors(doc):
        while error.context:
            error = max(error.context, key=lambda e: len(e.absolute_path))
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        found.append(f"{where}: {error.message[:200]}")
    return found


# -- validity ---------------------------------------------------------------------------------


def test_asyncapi_document_is_valid_against_the_official_3_0_0_schema(
    document: Doc, asyncapi_schema: Draft7Validator
) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert _problems(asyncapi_schema, document) == []


def _drop_version(doc: Doc) -> None:
    del doc["asyncapi"]


def _unknown_top_level_field(doc: Doc) -> None:
    doc["exchanges"] = {}


def _queue_on_a_routing_key_channel(doc: Doc) -> None:
    binding = doc["channels"]["requestModify"]["bindings"]["amqp"]
    binding["queue"] = {"name": "dhcp.failover.requests"}


def _transient_delivery_mode_three(doc: Doc) -> None:
    doc["operations"]["sendResultEvent"]["bindings"]["amqp"]["deliveryMode"] = 3


def _reply_address_not_a_runtime_expression(doc: Doc) -> None:
    doc["operations"]["receiveRequest"]["reply"]["address"]["location"] = "reply_to"


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        pytest.param(_drop_version, "(root): 'asyncapi' is a required", id="no-asyncapi"),
        pytest.param(_unknown_top_level_field, "(root): 'exchanges' does not", id="unknown-field"),
        pytest.param(
            _queue_on_a_routing_key_channel,
            "channels/requestModify/bindings/amqp",
            id="queue-on-routing-key",
        ),
        pytest.param(
            _transient_delivery_mode_three,
            "operations/sendResultEvent/bindings/amqp/deliveryMode",
            id="delivery-mode-3",
        ),
        pytest.param(
            _reply_address_not_a_runtime_expression,
            "operations/receiveRequest/reply/address/location",
            id="reply-address-not-an-expression",
        ),
    ],
)
def test_the_official_schema_rejects_a_broken_copy_of_the_document(
    document: Doc, asyncapi_schema: Draft7Validator, breakage: Callable[[Doc], None], where: str
) -> None:
    broken = copy.deepcopy(document)
    breakage(broken)
    problems = _problems(asyncapi_schema, broken)
    assert any(p.startswith(where) for p in problems), problems


# -- drift: topology --------------------------------------------------------------------------


def _amqp(doc: Doc, channel: str) -> dict[str, Any]:
    binding = doc["channels"][channel]["bindings"]["amqp"]
    assert isinstance(binding, dict)
    return binding


def _topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def test_request_channels_are_the_request_exchange_with_the_routing_keys_the_worker_reads(
    document: Doc,
) -> None:
    settings = _defaults()
    channels = {"requestModify": Operation.modify, "requestRemove": Operation.remove}
    for name, operation in channels.items():
        channel = document["channels"][name]
        assert channel["address"] == f"request.{operation.value}"
        assert _topic_matches(settings.request_binding_key, channel["address"])
        binding = _amqp(document, name)
        assert binding["is"] == "routingKey"
        assert binding["exchange"] == {
            "name": settings.request_exchange,
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "/",
        }


def test_request_queue_channel_has_the_declared_name_arguments_and_binding(
    document: Doc,
) -> None:
    settings = _defaults()
    assert document["channels"]["requestQueue"]["address"] == settings.request_queue
    binding = _amqp(document, "requestQueue")
    assert binding["is"] == "queue"
    assert binding["queue"]["name"] == settings.request_queue
    assert binding["queue"]["durable"] is True
    assert binding["queue"]["exclusive"] is False
    assert binding["queue"]["autoDelete"] is False
    assert binding["x-arguments"] == request_queue_arguments(settings)
    assert binding["x-bound-to"] == [
        {
            "exchange": settings.request_exchange,
            "type": "topic",
            "routingKey": settings.request_binding_key,
        }
    ]


def test_dead_letter_channel_is_the_dead_letter_queue_on_the_fanout_exchange(
    document: Doc,
) -> None:
    settings = _defaults()
    assert document["channels"]["deadLetters"]["address"] == settings.dead_letter_queue
    binding = _amqp(document, "deadLetters")
    assert binding["queue"]["name"] == settings.dead_letter_queue
    assert binding["x-arguments"] == DEAD_LETTER_QUEUE_ARGUMENTS
    assert binding["x-bound-to"] == [
        {"exchange": settings.dead_letter_exchange, "type": "fanout", "routingKey": ""}
    ]
    assert request_queue_arguments(settings)["x-dead-letter-exchange"] == (
        settings.dead_letter_exchange
    )


def test_event_channel_routing_keys_are_every_operation_and_outcome_the_worker_publishes(
    document: Doc,
) -> None:
    settings = _defaults()
    channel = document["channels"]["events"]
    binding = _amqp(document, "events")
    assert binding["is"] == "routingKey"
    assert binding["exchange"]["name"] == settings.event_exchange
    assert binding["exchange"]["type"] == "topic"
    assert binding["exchange"]["durable"] is True
    operations = [o.value for o in Operation] + [UNKNOWN_OPERATION]
    outcomes = [o.value for o in Outcome]
    assert channel["parameters"]["operation"]["enum"] == operations
    assert channel["parameters"]["outcome"]["enum"] == outcomes
    for operation in operations:
        for outcome in Outcome:
            address = channel["address"].format(operation=operation, outcome=outcome.value)
            assert address == routing_key(operation, outcome)


def test_reply_channel_accepts_the_reply_to_names_the_settings_allow(document: Doc) -> None:
    fields = Settings.model_fields
    if "reply_to_prefixes" not in fields:
        pytest.skip("worker.settings has no reply_to_prefixes yet (docs/contract.md §8)")
    default = fields["reply_to_prefixes"].default
    prefixes = default.split(",") if isinstance(default, str) else list(default)
    accepted = _amqp(document, "reply")["x-reply-to-accepted"]
    direct = ["amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to.*"]
    assert accepted == direct + [f"{p.strip()}*" for p in prefixes]


# -- drift: messages --------------------------------------------------------------------------

PAYLOADS = {
    "modifyRequest": ("modify-request.schema.json", REQUEST_CONTENT_TYPE),
    "removeRequest": ("remove-request.schema.json", REQUEST_CONTENT_TYPE),
    "resultEvent": ("result-event.schema.json", EVENT_CONTENT_TYPE),
}


def _payload_schema(document: Doc, message: str) -> dict[str, Any]:
    payload = document["components"]["messages"][message]["payload"]
    assert payload["schemaFormat"] == SCHEMA_FORMAT
    ref = payload["schema"]["$ref"]
    path = (DOCUMENT.parent / ref).resolve()
    assert path.parent == REPO / "schemas", ref
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


@pytest.mark.parametrize("message", sorted(PAYLOADS))
def test_message_payloads_are_the_checked_in_schemas_with_their_content_types(
    document: Doc, message: str
) -> None:
    file, content_type = PAYLOADS[message]
    ref = document["components"]["messages"][message]["payload"]["schema"]["$ref"]
    assert ref == f"../schemas/{file}"
    schema = _payload_schema(document, message)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["components"]["messages"][message]["contentType"] == content_type


@pytest.mark.parametrize("message", sorted(PAYLOADS))
def test_message_examples_validate_against_their_payload_schemas(
    document: Doc, message: str
) -> None:
    validator = Draft202012Validator(_payload_schema(document, message))
    examples = document["components"]["messages"][message]["examples"]
    assert examples
    for example in examples:
        assert [e.message for e in validator.iter_errors(example["payload"])] == []


def test_request_examples_are_the_contract_examples(document: Doc) -> None:
    messages = document["components"]["messages"]
    assert messages["modifyRequest"]["examples"][0]["payload"] == MODIFY
    assert messages["removeRequest"]["examples"][0]["payload"] == REMOVE
    assert messages["modifyRequest"]["name"] == MODIFY_COMMAND
    assert messages["removeRequest"]["name"] == REMOVE_COMMAND


def test_event_example_is_an_event_the_worker_could_publish(document: Doc) -> None:
    example = document["components"]["messages"]["resultEvent"]["examples"][0]
    event = decode_event(json.dumps(example["payload"]))
    request_id = event.data.requestId
    assert request_id is not None
    assert event.id == event_id(request_id, event.data.outcome)
    assert event.type == event_type("modify", event.data.outcome)
    assert event.source == _defaults().event_source
    assert example["headers"]["messageId"] == event.id
    assert example["headers"]["type"] == event.type
    assert example["headers"]["appId"] == APP_ID
    assert example["headers"]["contentType"] == EVENT_CONTENT_TYPE
    address = document["channels"]["events"]["address"]
    assert event_routing_key(event) == address.format(
        operation="modify", outcome=event.data.outcome.value
    )


def test_operations_receive_requests_and_send_persistent_events(document: Doc) -> None:
    receive = document["operations"]["receiveRequest"]
    send = document["operations"]["sendResultEvent"]
    assert receive["action"] == "receive"
    assert receive["channel"] == {"$ref": "#/channels/requestQueue"}
    assert receive["bindings"]["amqp"]["ack"] is True
    assert receive["reply"]["address"]["location"] == "$message.header#/replyTo"
    assert receive["reply"]["channel"] == {"$ref": "#/channels/reply"}
    assert send["action"] == "send"
    assert send["channel"] == {"$ref": "#/channels/events"}
    for operation in (receive, send):
        assert operation["bindings"]["amqp"]["deliveryMode"] == 2


def test_document_version_is_the_package_version(document: Doc) -> None:
    assert document["info"]["version"] == version("dhcp-failover-worker")


# -- drift: the contract's tables -------------------------------------------------------------

_SETTING_ROW = re.compile(r"^\| `DHCP_FAILOVER_(\w+)` \| `([^`]*)` \|", re.MULTILINE)


def _shown(value: object) -> str:
    """A default as the settings table writes it (``10``, not ``10.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_contract_settings_table_is_every_setting_with_its_default() -> None:
    text = CONTRACT.read_text(encoding="utf-8")
    section = text[text.index("## §6 Settings") : text.index("## §7 ")]
    documented = {name.lower(): default for name, default in _SETTING_ROW.findall(section)}
    actual = {name: _shown(field.default) for name, field in Settings.model_fields.items()}
    assert documented == actual


def _codes(cls: type[WorkerError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


def test_contract_names_every_error_code_of_the_exception_taxonomy() -> None:
    text = CONTRACT.read_text(encoding="utf-8")
    section = text[text.index("## §9 Error codes") : text.index("## §10 ")]
    missing = sorted(c for c in _codes(WorkerError) - {"error"} if f"`{c}`" not in section)
    assert missing == []
