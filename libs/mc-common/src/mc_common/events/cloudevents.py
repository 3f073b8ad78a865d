"""MC events as CloudEvents 1.0 on Kafka (the CloudEvents Kafka protocol binding).

MC writes **binary content mode**: the record value is the payload message itself (protobuf),
the attributes are `ce_`-prefixed headers (`ce_specversion: 1.0`, `ce_id`, `ce_source`,
`ce_type`, `ce_time`, `ce_dataschema`), `content-type: application/protobuf`, and the record
key is the tenant. MC's own attributes are CloudEvents extension attributes (lower-case
alphanumeric names, as the spec requires): `mctenant` (the tenant; also the key) and
`mcschemaversion` (the payload schema version named by `type`).

Consumers read any conforming CloudEvent of their type: binary mode (protobuf or JSON data),
structured mode (`content-type: application/cloudevents+json`, with `data` or `data_base64`),
and, during the transition (ADR 0051), the pre-CloudEvents `EventEnvelope` records.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeAlias, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from mc.common.v1.event_pb2 import EventEnvelope

SPEC_VERSION: Final = "1.0"
PROTOBUF: Final = "application/protobuf"
JSON: Final = "application/json"
STRUCTURED_JSON: Final = "application/cloudevents+json"
DATASCHEMA_PREFIX: Final = "type.googleapis.com/"
"""`dataschema` of a protobuf payload: the message's type URL, as `google.protobuf.Any` has it."""

CONTENT_TYPE_HEADER: Final = "content-type"
EXT_TENANT: Final = "mctenant"
EXT_SCHEMA_VERSION: Final = "mcschemaversion"
_REQUIRED: Final = ("id", "source", "type")
_MAX_ATTRIBUTE_BYTES: Final = 4096


M = TypeVar("M", bound=Message)
_MessageClass: TypeAlias = type[Message]  # `type` itself is a field name inside CloudEvent


class MalformedEventError(ValueError):
    """A record is not a usable event (no id/type/source, wrong spec version, bad data)."""


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One event: its CloudEvents attributes and its data (protobuf or JSON bytes)."""

    id: str
    source: str
    type: str
    tenant: str
    data: bytes
    datacontenttype: str = PROTOBUF
    dataschema: str = ""
    time: datetime | None = None
    schema_version: int = 1

    @classmethod
    def of(
        cls,
        *,
        tenant: str,
        event_type: str,
        message: Message,
        source: str,
        schema_version: int = 1,
        event_id: str | None = None,
        time: datetime | None = None,
    ) -> CloudEvent:
        """An event carrying `message` as protobuf; `event_id` defaults to a new UUID4 and
        `time` to now (UTC).

        Raises:
            ValueError: `event_type` or `source` is empty, or `schema_version` is below 1.
        """
        if not event_type:
            raise ValueError("event_type must not be empty")
        if not source:
            raise ValueError("source must not be empty")
        if schema_version < 1:
            raise ValueError(f"schema_version must be >= 1, got {schema_version}")
        return cls(
            id=event_id or str(uuid.uuid4()),
            source=source,
            type=event_type,
            tenant=tenant,
            data=message.SerializeToString(),
            datacontenttype=PROTOBUF,
            dataschema=DATASCHEMA_PREFIX + message.DESCRIPTOR.full_name,
            time=time if time is not None else datetime.now(UTC),
            schema_version=schema_version,
        )

    def binary_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers of this event in binary content mode."""
        headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
        ]
        if self.time is not None:
            headers.append(("ce_time", _rfc3339(self.time).encode()))
        if self.dataschema:
            headers.append(("ce_dataschema", self.dataschema.encode()))
        headers.append((f"ce_{EXT_TENANT}", self.tenant.encode()))
        headers.append((f"ce_{EXT_SCHEMA_VERSION}", str(self.schema_version).encode()))
        headers.append((CONTENT_TYPE_HEADER, self.datacontenttype.encode()))
        return headers

    def unpack(self, message_type: _MessageClass) -> Message:
        """The data as `message_type` (protobuf or its JSON mapping).

        Raises:
            MalformedEventError: the data names another message type, or does not parse.
        """
        full_name = message_type.DESCRIPTOR.full_name
        if self.dataschema and self.dataschema.startswith(DATASCHEMA_PREFIX):
            named = self.dataschema[len(DATASCHEMA_PREFIX) :]
            if named != full_name:
                raise MalformedEventError(f"event {self.id} carries {named!r}, not {full_name}")
        message = message_type()
        try:
            if _is_json(self.datacontenttype):
                json_format.Parse(self.data, message)
            else:
                message.ParseFromString(self.data)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            raise MalformedEventError(
                f"event {self.id}: data is not a {full_name} ({self.datacontenttype}): {exc}"
            ) from exc
        return message


def decode_record(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes],
    key: bytes | None,
    value: bytes | None,
) -> CloudEvent:
    """The event a Kafka record carries, in any of the forms consumers accept.

    Raises:
        MalformedEventError: the record is none of them, or lacks a required attribute.
    """
    fields = {
        k.lower(): v for k, v in (headers.items() if isinstance(headers, Mapping) else headers)
    }
    content_type = _text(fields.get(CONTENT_TYPE_HEADER, b""), CONTENT_TYPE_HEADER).strip()
    if "ce_specversion" in fields:
        return _binary(fields, key, value or b"", content_type)
    if content_type.split(";")[0].strip().lower() == STRUCTURED_JSON:
        return _structured(key, value)
    return _legacy(value)


def _binary(
    fields: Mapping[str, bytes], key: bytes | None, value: bytes, content_type: str
) -> CloudEvent:
    attrs = {name[3:]: _text(raw, name) for name, raw in fields.items() if name.startswith("ce_")}
    _check_required(attrs)
    tenant = attrs.get(EXT_TENANT) or (_text(key, "key") if key else "")
    return CloudEvent(
        id=attrs["id"],
        source=attrs["source"],
        type=attrs["type"],
        tenant=tenant,
        data=value,
        datacontenttype=content_type or attrs.get("datacontenttype", "") or PROTOBUF,
        dataschema=attrs.get("dataschema", ""),
        time=_time(attrs.get("time")),
        schema_version=_schema_version(attrs.get(EXT_SCHEMA_VERSION)),
    )


def _structured(key: bytes | None, value: bytes | None) -> CloudEvent:
    try:
        document = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEventError(f"structured event is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedEventError("structured event is not a JSON object")
    attrs = {k: v for k, v in document.items() if k not in ("data", "data_base64")}
    for name, attr in attrs.items():
        if not isinstance(attr, str | int | bool):
            raise MalformedEventError(f"attribute {name!r} is not a string, integer or boolean")
    text = {k: str(v) for k, v in attrs.items()}
    _check_required(text)
    content_type = text.get("datacontenttype", JSON)
    if "data_base64" in document:
        try:
            data = base64.b64decode(str(document["data_base64"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedEventError(f"data_base64 is not base64: {exc}") from exc
        if "datacontenttype" not in text:
            content_type = PROTOBUF
    elif _is_json(content_type):
        data = json.dumps(document.get("data")).encode()
    elif isinstance(document.get("data"), str):
        data = str(document["data"]).encode()
    else:
        raise MalformedEventError(f"data of content type {content_type!r} must be base64")
    tenant = text.get(EXT_TENANT) or (_text(key, "key") if key else "")
    return CloudEvent(
        id=text["id"],
        source=text["source"],
        type=text["type"],
        tenant=tenant,
        data=data,
        datacontenttype=content_type,
        dataschema=text.get("dataschema", ""),
        time=_time(text.get("time")),
        schema_version=_schema_version(text.get(EXT_SCHEMA_VERSION)),
    )


def _legacy(value: bytes | None) -> CloudEvent:
    """A record of the pre-CloudEvents `EventEnvelope` format (read during the transition)."""
    if not value:
        raise MalformedEventError("record has no value and no CloudEvents headers")
    envelope = EventEnvelope()
    try:
        envelope.ParseFromString(value)
    except DecodeError as exc:
        raise MalformedEventError(f"value is neither a CloudEvent nor an envelope: {exc}") from exc
    if not envelope.id or not envelope.type:
        raise MalformedEventError("record is neither a CloudEvent nor an envelope with id and type")
    return CloudEvent(
        id=envelope.id,
        source=envelope.source or "unknown",
        type=envelope.type,
        tenant=envelope.tenant,
        data=envelope.data.value,
        datacontenttype=PROTOBUF,
        dataschema=envelope.data.type_url,
        time=envelope.time.ToDatetime(tzinfo=UTC) if envelope.HasField("time") else None,
        schema_version=envelope.schema_version or 1,
    )


def _check_required(attrs: Mapping[str, str]) -> None:
    version = attrs.get("specversion")
    if version != SPEC_VERSION:
        raise MalformedEventError(f"specversion {version!r} is not {SPEC_VERSION}")
    missing = [name for name in _REQUIRED if not attrs.get(name)]
    if missing:
        raise MalformedEventError(f"event lacks required attribute(s): {', '.join(missing)}")


def _text(raw: bytes | str | None, name: str) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if len(raw) > _MAX_ATTRIBUTE_BYTES:
        raise MalformedEventError(f"header {name} longer than {_MAX_ATTRIBUTE_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise MalformedEventError(f"header {name} is not UTF-8") from exc
    if "\x00" in text:
        raise MalformedEventError(f"header {name} contains a NUL character")
    return text


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise MalformedEventError(f"time {text!r} is not RFC 3339") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _schema_version(text: str | None) -> int:
    if not text:
        return 1
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise MalformedEventError(f"{EXT_SCHEMA_VERSION} {text!r} is not a positive integer")
    return int(text)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == JSON or media.endswith("+json")


def _rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")
