"""Requests in (docs/contract.md §2): ``ModifyDHCPFailoverRelationship`` and
``RemoveDHCPFailoverRelationships``.

Parameter names follow Micetro's API exactly (PascalCase, ``Mclt``, ``PrimaryServer`` ...);
Micetro's JSON camelCase spelling is accepted too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_pascal

from worker.messages.values import (
    MAX_COMMENT_LENGTH,
    MAX_NAMES_PER_REMOVE,
    DeconfigureAction,
    LoadBalanceMaxSeconds,
    MaxResponseDelay,
    MaxUnackedUpdates,
    Mclt,
    Operation,
    Port,
    RelationshipName,
    RequestId,
    ServerName,
)

_PARAMS_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    alias_generator=AliasGenerator(
        validation_alias=lambda f: AliasChoices(to_pascal(f), to_camel(f)),
        serialization_alias=to_pascal,
    ),
)


#: The optional settings of a modify, by attribute name.
SETTING_FIELDS = (
    "mclt",
    "port",
    "partner_port",
    "load_balance_max_seconds",
    "max_response_delay",
    "max_unacked_updates",
)


class ModifyParams(BaseModel):
    """``ModifyDHCPFailoverRelationship``: an omitted setting keeps its current value."""

    model_config = ConfigDict(
        **_PARAMS_CONFIG,
        json_schema_extra={"anyOf": [{"required": [to_pascal(f)]} for f in SETTING_FIELDS]},
    )

    name: RelationshipName
    primary_server: ServerName
    secondary_server: ServerName
    mclt: Mclt | None = None
    port: Port | None = None
    partner_port: Port | None = Field(
        default=None,
        description="The secondary's own port (primary's `peer port`); equal to Port if omitted.",
    )
    load_balance_max_seconds: LoadBalanceMaxSeconds | None = None
    max_response_delay: MaxResponseDelay | None = None
    max_unacked_updates: MaxUnackedUpdates | None = None

    @model_validator(mode="after")
    def _check(self) -> ModifyParams:
        if self.primary_server == self.secondary_server:
            raise ValueError("PrimaryServer and SecondaryServer must be different servers")
        if all(getattr(self, f) is None for f in SETTING_FIELDS):
            names = ", ".join(to_pascal(f) for f in SETTING_FIELDS)
            raise ValueError(f"at least one setting must be given: {names}")
        return self


class RemoveParams(BaseModel):
    """``RemoveDHCPFailoverRelationships``: ``Name`` may be one name or a list, removed as one."""

    model_config = _PARAMS_CONFIG

    server: ServerName
    name: RelationshipName | list[RelationshipName] = Field(
        description="One relationship name, or a list of names removed as one change."
    )
    deconfigure_action: DeconfigureAction = DeconfigureAction.disable

    @field_validator("name")
    @classmethod
    def _names(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("Name must not be an empty list")
            if len(v) > MAX_NAMES_PER_REMOVE:
                raise ValueError(f"at most {MAX_NAMES_PER_REMOVE} names per request")
            if len(set(v)) != len(v):
                raise ValueError("Name lists a relationship twice")
        return v

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if isinstance(self.name, str) else tuple(self.name)


_ENVELOPE_CONFIG = ConfigDict(
    extra="forbid",
    frozen=True,
    alias_generator=AliasGenerator(
        validation_alias=lambda f: AliasChoices(to_camel(f), to_pascal(f)),
        serialization_alias=to_camel,
    ),
)


class _RequestBase(BaseModel):
    model_config = _ENVELOPE_CONFIG

    request_id: RequestId | None = Field(
        default=None,
        description="Idempotency key; the AMQP message_id is used when absent.",
    )
    dry_run: StrictBool = Field(
        default=False, description="Compute and validate everything, report diffs, change nothing."
    )
    comment: Annotated[str, StringConstraints(max_length=MAX_COMMENT_LENGTH)] | None = None


class ModifyRequest(_RequestBase):
    command: Literal["ModifyDHCPFailoverRelationship"] = Field(alias="command")
    params: ModifyParams

    @property
    def operation(self) -> Operation:
        return Operation.modify

    @property
    def subject(self) -> str:
        return self.params.name


class RemoveRequest(_RequestBase):
    command: Literal["RemoveDHCPFailoverRelationships"] = Field(alias="command")
    params: RemoveParams

    @property
    def operation(self) -> Operation:
        return Operation.remove

    @property
    def subject(self) -> str:
        return ",".join(self.params.names)


Request = Annotated[ModifyRequest | RemoveRequest, Field(discriminator="command")]


REQUEST_ADAPTER: TypeAdapter[ModifyRequest | RemoveRequest] = TypeAdapter(Request)


def parse_request(body: bytes | str) -> ModifyRequest | RemoveRequest:
    """Validate a request body; raises ``pydantic.ValidationError`` (the caller maps it)."""
    return REQUEST_ADAPTER.validate_json(body)
