"""proto <-> domain for `mc.gateway.v1.ApiKeyService`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from mc.gateway.v1 import api_key_service_pb2 as pb
from mc_common.errors import InvalidArgument
from mc_gateway.apikeys import DEFAULT_OVERLAP, ApiKeyRecord

_TENANT_PREFIX = "tenants/"


def tenant_of_parent(parent: str) -> str:
    if not parent.startswith(_TENANT_PREFIX):
        raise InvalidArgument.field("parent", "expected tenants/{tenant}")
    return parent[len(_TENANT_PREFIX) :]


def key_of_name(name: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "keys":
        raise InvalidArgument.field("name", "expected tenants/{tenant}/keys/{key_id}")
    return parts[1], parts[3]


def overlap(seconds: int) -> timedelta:
    return timedelta(seconds=seconds) if seconds else DEFAULT_OVERLAP


def key_to_proto(record: ApiKeyRecord, now: datetime | None = None) -> pb.ApiKey:
    now = now or datetime.now(UTC)
    out = pb.ApiKey(
        name=f"tenants/{record.tenant}/keys/{record.key_id}",
        key_id=record.key_id,
        tenant=record.tenant,
        principal=record.principal,
        display_name=record.display_name,
        state=_state(record, now),
        create_time=_ts(record.created_at),
        successor_key_id=record.successor_key_id or "",
    )
    if record.expire_at is not None:
        out.expire_time.CopyFrom(_ts(record.expire_at))
    if record.revoked_at is not None:
        out.revoke_time.CopyFrom(_ts(record.revoked_at))
    return out


def _state(record: ApiKeyRecord, now: datetime) -> pb.ApiKeyState.ValueType:
    if record.revoked_at is not None:
        return pb.API_KEY_STATE_REVOKED
    if record.expire_at is not None:
        return pb.API_KEY_STATE_EXPIRING if now < record.expire_at else pb.API_KEY_STATE_EXPIRED
    return pb.API_KEY_STATE_ACTIVE


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out
