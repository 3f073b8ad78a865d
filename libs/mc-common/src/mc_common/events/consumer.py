"""`EventConsumer`: at-least-once consumption of MC events with a dead-letter topic.

Delivery contract (see docs/adr/0004-events-at-least-once.md):

- An offset is committed only after its record is *settled*: the handler returned, or the
  record was written to the dead-letter topic `<topic>.dlq` and the broker acked it. A crash
  before the commit means redelivery, never loss, so handlers must be idempotent on the event
  id (see `mc_common.events.idempotency`).
- A record whose value is not a valid `EventEnvelope` is malformed: it goes to the dead-letter
  topic with the error in headers, then its offset is committed.
- A handler exception is treated as transient: the same record is retried with exponential
  backoff, forever, and later records of the consumer wait behind it (order is kept). A
  handler that knows a record can never succeed raises `DeadLetterEvent` to park it in the
  dead-letter topic instead. NOTE: a handler stuck for longer than `max_poll_interval_ms`
  costs this consumer its partitions; another member then redelivers the record.
- `stop()` lets the current handler call finish, commits what was settled and leaves the
  group; records fetched but not settled are redelivered to the next owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from mc_common.events.envelope import MalformedEventError, ReceivedEvent, decode_envelope
from mc_common.events.publisher import producer_options

log = logging.getLogger(__name__)

Handler = Callable[[ReceivedEvent], Awaitable[None]]
"""An async function called once per decoded event; it must be idempotent on `event.id`."""

DEAD_LETTER_SUFFIX = ".dlq"
HEADER_DLQ_ERROR = "mc_dlq_error"
HEADER_DLQ_ERROR_TYPE = "mc_dlq_error_type"
HEADER_DLQ_TOPIC = "mc_dlq_topic"
HEADER_DLQ_PARTITION = "mc_dlq_partition"
HEADER_DLQ_OFFSET = "mc_dlq_offset"
HEADER_DLQ_GROUP = "mc_dlq_group"

_MAX_ERROR_HEADER_CHARS = 1000


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of `topic`: `<topic>.dlq`."""
    return f"{topic}{DEAD_LETTER_SUFFIX}"


@dataclass(frozen=True, slots=True)
class GroupTimings:
    """Consumer-group membership timings (aiokafka's defaults; tests use shorter ones)."""

    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int | None = None
    """None: same as the session timeout."""
    max_poll_interval_ms: int = 300_000

    def consumer_options(self) -> dict[str, Any]:
        """These timings as `AIOKafkaConsumer` keyword arguments."""
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "rebalance_timeout_ms": self.rebalance_timeout_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }


class DeadLetterEvent(Exception):
    """Raised by a handler for a record that can never be processed (for example an unknown
    schema version): the consumer writes it to the dead-letter topic and moves on."""


class _StopRequested(Exception):
    """Internal: `stop()` was called while a record was waiting to be retried."""


class EventConsumer:
    """Consumes enveloped events from `topics` as member of `group_id` and calls `handler`.

    Run it as a task and stop it gracefully::

        consumer = EventConsumer(servers, "mc.policy.decisions", group_id="mc-pql", handler=h)
        task = asyncio.create_task(consumer.run())
        ...
        await consumer.stop()

    Args:
        bootstrap_servers: `host:port[,host:port]` of the Kafka cluster.
        topics: topic or topics to subscribe to.
        group_id: consumer group; committed offsets belong to it.
        handler: see `Handler`.
        client_id: Kafka client id shown in broker logs.
        auto_offset_reset: where a group without committed offsets starts; `earliest` so a
            new group misses nothing.
        max_batch: most records fetched per poll (the redelivery window after a crash).
        poll_timeout_ms: longest wait for records per poll; bounds how quickly `stop()` acts.
        retry_initial_backoff: seconds before the first retry of a failed handler call.
        retry_max_backoff: cap of the exponential retry delay, in seconds.
        timings: group membership timings (see `GroupTimings`).
        dead_letter_producer: a started producer for dead letters; by default the consumer
            creates and closes its own.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        *,
        group_id: str,
        handler: Handler,
        client_id: str | None = None,
        auto_offset_reset: str = "earliest",
        max_batch: int = 100,
        poll_timeout_ms: int = 500,
        retry_initial_backoff: float = 0.5,
        retry_max_backoff: float = 30.0,
        timings: GroupTimings | None = None,
        dead_letter_producer: AIOKafkaProducer | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("group_id must not be empty")
        self._bootstrap_servers = bootstrap_servers
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        if not self._topics:
            raise ValueError("at least one topic is required")
        self._group_id = group_id
        self._handler = handler
        self._client_id = client_id or f"mc-consumer-{group_id}"
        self._consumer_options: dict[str, Any] = {
            "auto_offset_reset": auto_offset_reset,
            **(timings or GroupTimings()).consumer_options(),
        }
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_initial_backoff = retry_initial_backoff
        self._retry_max_backoff = retry_max_backoff
        self._dead_letter_producer = dead_letter_producer
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self.processed = 0
        """Records the handler settled successfully."""
        self.dead_lettered = 0
        """Records written to a dead-letter topic."""
        self.retries = 0
        """Failed attempts that were retried."""

    @property
    def group_id(self) -> str:
        """The consumer group."""
        return self._group_id

    async def run(self) -> None:
        """Consume until `stop()` is called (or the task is cancelled), then close.

        Raises:
            RuntimeError: `run()` is already running or has finished (create a new consumer).
            aiokafka.errors.KafkaError: the cluster could not be reached at start.
        """
        if self._running or self._finished.is_set():
            raise RuntimeError("an EventConsumer runs once; create a new one")
        self._running = True
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            **self._consumer_options,
        )
        owns_producer = self._dead_letter_producer is None
        producer = self._dead_letter_producer or AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=f"{self._client_id}-dlq",
            **producer_options(),
        )
        try:
            if owns_producer:
                await producer.start()
            await consumer.start()
            while not self._stopping.is_set():
                batches = await consumer.getmany(
                    timeout_ms=self._poll_timeout_ms, max_records=self._max_batch
                )
                for partition, records in batches.items():
                    settled = await self._settle_partition(producer, records)
                    if settled is not None:
                        await self._commit(consumer, partition, settled + 1)
                    if self._stopping.is_set():
                        break
        finally:
            try:
                await _leave_group_at_generation_zero(consumer)
                await consumer.stop()
            finally:
                if owns_producer:
                    await producer.stop()
                self._running = False
                self._finished.set()

    async def stop(self) -> None:
        """Finish the record in hand, commit, leave the group and wait for `run()` to return."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()

    async def _settle_partition(
        self, producer: AIOKafkaProducer, records: Sequence[ConsumerRecord[Any, Any]]
    ) -> int | None:
        """Settle `records` in order; return the offset of the last one settled."""
        settled: int | None = None
        for record in records:
            try:
                await self._settle_with_retry(producer, record)
            except _StopRequested:
                break
            settled = record.offset
            if self._stopping.is_set():
                break
        return settled

    async def _settle_with_retry(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[Any, Any]
    ) -> None:
        attempt = 0
        while True:
            try:
                await self._settle(producer, record)
                return
            except Exception:
                attempt += 1
                self.retries += 1
                delay = min(
                    self._retry_max_backoff, self._retry_initial_backoff * 2 ** (attempt - 1)
                )
                log.exception(
                    "event handling failed; retrying in %.2fs",
                    delay,
                    extra=_record_fields(record) | {"attempt": attempt, "group": self._group_id},
                )
                if await self._stop_requested_within(delay):
                    raise _StopRequested from None

    async def _settle(self, producer: AIOKafkaProducer, record: ConsumerRecord[Any, Any]) -> None:
        try:
            envelope = decode_envelope(record.value)
        except MalformedEventError as err:
            await self._dead_letter(producer, record, err)
            return
        event = ReceivedEvent(
            envelope=envelope,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            headers=dict(record.headers),
        )
        try:
            await self._handler(event)
        except DeadLetterEvent as err:
            await self._dead_letter(producer, record, err)
            return
        self.processed += 1

    async def _dead_letter(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[Any, Any], error: Exception
    ) -> None:
        topic = dead_letter_topic(record.topic)
        headers = [
            *record.headers,
            (HEADER_DLQ_ERROR, str(error)[:_MAX_ERROR_HEADER_CHARS].encode()),
            (HEADER_DLQ_ERROR_TYPE, type(error).__name__.encode()),
            (HEADER_DLQ_TOPIC, record.topic.encode()),
            (HEADER_DLQ_PARTITION, str(record.partition).encode()),
            (HEADER_DLQ_OFFSET, str(record.offset).encode()),
            (HEADER_DLQ_GROUP, self._group_id.encode()),
        ]
        await producer.send_and_wait(topic, value=record.value, key=record.key, headers=headers)
        self.dead_lettered += 1
        log.warning(
            "event dead-lettered to %s: %s",
            topic,
            error,
            extra=_record_fields(record) | {"group": self._group_id},
        )

    async def _commit(
        self, consumer: AIOKafkaConsumer, partition: TopicPartition, next_offset: int
    ) -> None:
        try:
            await consumer.commit({partition: next_offset})
        except (CommitFailedError, KafkaError) as err:
            # The partition moved to another member (rebalance) or the coordinator is away;
            # the settled records will be redelivered and skipped by idempotent handlers.
            log.warning(
                "offset commit failed; records will be redelivered: %s",
                err,
                extra={"topic": partition.topic, "partition": partition.partition},
            )

    async def _stop_requested_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True


def _record_fields(record: ConsumerRecord[Any, Any]) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


async def _leave_group_at_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Send LeaveGroup when aiokafka would not, so a restarted member need not wait.

    Tansu numbers group generations from 0 while aiokafka only leaves a group when its
    generation is above 0 (Kafka starts at 1). Without this, the next member of the group
    waits for the old member's session to expire. A no-op on Apache Kafka. Uses aiokafka
    internals, hence the defensive lookups; failure only costs that wait.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return
    member_id = getattr(coordinator, "member_id", "")
    if not member_id:
        return
    try:
        async with asyncio.timeout(2.0):
            await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, member_id))
    except Exception as err:  # best effort: see the docstring
        log.debug("LeaveGroup at generation 0 failed: %s", err)
