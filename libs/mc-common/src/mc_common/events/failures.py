"""How an event consumer treats a failure: retry it (transient) or dead-letter it (permanent).

Transient failures (the database or broker unreachable, a timeout, a dependency that says
UNAVAILABLE) are retried with backoff for as long as they last: the record is good, the world
is not. Permanent failures (an undecodable record, data Postgres refuses, a broken constraint,
a domain error about the content) can never succeed, however often they are retried: after at
most `max_attempts` attempts the record goes to the dead-letter topic with the reason in its
headers, and the partition moves on. See docs/adr/0032-event-failure-classes.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

import grpc
import psycopg
import psycopg_pool
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from mc_common.errors import MCError
from mc_common.events.envelope import MalformedEventError


class DeadLetterReason(StrEnum):
    """Why a record was dead-lettered (header `mc_dlq_reason`)."""

    DECODE = "DECODE"
    """The record value is not a decodable event envelope or payload."""
    DATA = "DATA"
    """The event's data is invalid (the store refused a value, or a content rule failed)."""
    CONSTRAINT = "CONSTRAINT"
    """The store refused the event for a broken constraint."""
    CONFLICT = "CONFLICT"
    """The event id was seen with another body, or the event contradicts stored content."""
    REJECTED = "REJECTED"
    """The handler said the event can never be processed (unknown type, tenant mismatch...)."""
    FAILED = "FAILED"
    """The handler kept failing for a reason nobody classified."""


class DeadLetterEvent(Exception):
    """Raised by a handler for a record that can never be processed (for example an unknown
    schema version): the consumer writes it to the dead-letter topic at once and moves on."""

    def __init__(self, message: str, *, reason: DeadLetterReason = DeadLetterReason.REJECTED):
        super().__init__(message)
        self.reason = reason


class EventConflict(DeadLetterEvent):
    """The event id was already processed with a different body."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=DeadLetterReason.CONFLICT)


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified failure: retried while `transient`, else dead-lettered with `reason`."""

    transient: bool
    reason: DeadLetterReason
    immediate: bool = False
    """Dead-letter without further attempts (the record itself is the problem)."""


_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_CONFLICT_CODES = frozenset({grpc.StatusCode.ALREADY_EXISTS})
_DATA_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def classify(error: BaseException) -> Failure:
    """The default classification of a handler failure (see the module docstring)."""
    if isinstance(error, DeadLetterEvent):
        return Failure(False, error.reason, immediate=True)
    if isinstance(error, DecodeError | MalformedEventError):
        return Failure(False, DeadLetterReason.DECODE, immediate=True)
    if isinstance(error, MCError):
        if error.grpc_code in _TRANSIENT_CODES:
            return Failure(True, DeadLetterReason.FAILED)
        if error.grpc_code in _CONFLICT_CODES:
            return Failure(False, DeadLetterReason.CONFLICT, immediate=True)
        if error.grpc_code in _DATA_CODES:
            return Failure(False, DeadLetterReason.DATA, immediate=True)
        return Failure(False, DeadLetterReason.REJECTED)
    if isinstance(error, psycopg.errors.DataError):
        return Failure(False, DeadLetterReason.DATA)
    if isinstance(error, psycopg.errors.IntegrityError):
        return Failure(False, DeadLetterReason.CONSTRAINT)
    if isinstance(
        error,
        psycopg.OperationalError
        | psycopg.InterfaceError
        | psycopg_pool.PoolTimeout
        | KafkaError
        | ConnectionError
        | TimeoutError
        | asyncio.TimeoutError
        | OSError,
    ):
        return Failure(True, DeadLetterReason.FAILED)
    return Failure(False, DeadLetterReason.FAILED)
