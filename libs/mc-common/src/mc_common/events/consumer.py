"""`EventConsumer`: at-least-once consumption of MC events with a dead-letter topic.

Delivery contract (see docs/adr/0004-events-at-least-once.md and 0032):

- An offset is committed only after its record is *settled*: the handler returned, or the
  record was written to the dead-letter topic `<topic>.dlq` and the broker acked it. A crash
  before the commit means redelivery, never loss, so handlers must be idempotent on the event
  id (see `mc_common.events.idempotency`, which also reports a redelivered id whose body
  differs as a CONFLICT).
- Failures are classified (`mc_common.events.failures.classify`, or the `classify` argument).
  Transient ones (connection, timeout, UNAVAILABLE) are retried with exponential backoff for
  as long as they last, and later records of that partition wait (order is kept). Permanent
  ones (decode, data, constraint, conflict, or anything unclassified) are dead-lettered after
  at most `max_attempts` attempts (at once when the record itself is the problem), with the
  reason in the `mc_dlq_reason` header, and the partition moves on.
- Partitions are independent: each is worked by its own task while the consumer keeps polling
  the others, so one partition's stalled record never blocks another partition. A partition
  being worked is paused (nothing more is fetched for it) and resumed when its task is done.
- `stop()` lets the current handler calls finish, commits what was settled and leaves the
  group; records fetched but not settled are redelivered to the next owner. A revoked
  partition's task is cancelled; its unsettled records go to the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from mc_common.events.cloudevents import decode_record
from mc_common.events.envelope import ReceivedEvent
from mc_common.events.failures import (
    DeadLetterEvent,
    DeadLetterReason,
    EventConflict,
    Failure,
    classify,
)
from mc_common.events.publisher import producer_options
from mc_common.events.security import KafkaSecurity

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
HEADER_DLQ_REASON = "mc_dlq_reason"
HEADER_DLQ_ATTEMPTS = "mc_dlq_attempts"

__all__ = ["DeadLetterEvent", "DeadLetterReason", "EventConflict", "EventConsumer", "Failure"]

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


T = TypeVar("T")


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
        max_attempts: most attempts at a record whose failure is permanent before it is
            dead-lettered (transient failures are retried for as long as they last).
        classify: failure classification (default `mc_common.events.failures.classify`).
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
        max_attempts: int = 3,
        classify: Callable[[BaseException], Failure] = classify,
        timings: GroupTimings | None = None,
        dead_letter_producer: AIOKafkaProducer | None = None,
        security: KafkaSecurity | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("group_id must not be empty")
        self._bootstrap_servers = bootstrap_servers
        self._client_options = (security or KafkaSecurity()).client_options()
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
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._max_attempts = max_attempts
        self._classify = classify
        self._workers: dict[TopicPartition, asyncio.Task[None]] = {}
        self._queues: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        self._commit_lock = asyncio.Lock()
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
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            **self._consumer_options,
            **self._client_options,
        )
        consumer.subscribe(self._topics, listener=_Revocations(self))
        owns_producer = self._dead_letter_producer is None
        producer = self._dead_letter_producer or AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=f"{self._client_id}-dlq",
            **producer_options(),
            **self._client_options,
        )
        try:
            if owns_producer:
                await producer.start()
            await self._unless_stopped(consumer.start())
            while not self._stopping.is_set():
                batches = await self._unless_stopped(
                    consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._max_batch)
                )
                for partition, records in batches.items():
                    self._enqueue(consumer, producer, partition, records)
                self._reap(consumer)
        except _StopRequested:
            pass  # stop() came while starting or polling
        finally:
            try:
                await self._finish_workers()
                await _abandon_join(consumer)
                await _leave_group_at_generation_zero(consumer)
                await consumer.stop()
            finally:
                if owns_producer:
                    await producer.stop()
                self._running = False
                self._finished.set()

    def _enqueue(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        partition: TopicPartition,
        records: Sequence[ConsumerRecord[Any, Any]],
    ) -> None:
        """Hand `records` to the partition's worker, starting one (and pausing the partition)."""
        self._queues.setdefault(partition, []).extend(records)
        if partition not in self._workers:
            consumer.pause(partition)
            self._workers[partition] = asyncio.create_task(
                self._work(consumer, producer, partition),
                name=f"mc-consumer-{partition.topic}-{partition.partition}",
            )

    def _reap(self, consumer: AIOKafkaConsumer) -> None:
        """Resume partitions whose worker is done (from their first unsettled record)."""
        for partition, task in list(self._workers.items()):
            if not task.done():
                continue
            del self._workers[partition]
            unsettled = self._queues.pop(partition, [])
            if partition not in consumer.assignment():
                continue
            if unsettled:  # the worker stopped early: fetch those again
                consumer.seek(partition, unsettled[0].offset)
            consumer.resume(partition)

    async def _work(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, partition: TopicPartition
    ) -> None:
        """Settle the partition's queued records in order, committing after each run of them."""
        queue = self._queues[partition]
        while queue and not self._stopping.is_set():
            settled: int | None = None
            while queue:
                record = queue[0]
                try:
                    await self._settle_with_retry(producer, record)
                except _StopRequested:
                    break
                queue.pop(0)
                settled = record.offset
                if self._stopping.is_set():
                    break
            if settled is not None:
                await self._commit(consumer, partition, settled + 1)
            if self._stopping.is_set():
                break

    async def _finish_workers(self) -> None:
        """Let every partition's worker finish the record in hand (stop() is set)."""
        workers = list(self._workers.values())
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        self._queues.clear()

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        """Stop working partitions that moved to another member (they will redeliver)."""
        tasks = [self._workers.pop(p) for p in revoked if p in self._workers]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for partition in revoked:
            self._queues.pop(partition, None)

    async def stop(self) -> None:
        """Finish the record in hand, commit, leave the group and wait for `run()` to return."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()

    async def _settle_with_retry(
        self, producer: AIOKafkaProducer, record: ConsumerRecord[Any, Any]
    ) -> None:
        """Process `record` until it is settled: handled, or dead-lettered (see the module)."""
        attempt = 0
        dead_letter: tuple[Exception, DeadLetterReason] | None = None
        while True:
            try:
                if dead_letter is None:
                    attempt += 1
                    await self._settle(producer, record)
                else:
                    await self._dead_letter(producer, record, *dead_letter, attempt)
                return
            except Exception as exc:
                failure = (
                    Failure(True, DeadLetterReason.FAILED)  # the dead-letter write itself
                    if dead_letter is not None
                    else self._classify(exc)
                )
                if not failure.transient and (failure.immediate or attempt >= self._max_attempts):
                    dead_letter = (exc, failure.reason)
                    continue
                self.retries += 1
                delay = min(
                    self._retry_max_backoff, self._retry_initial_backoff * 2 ** (attempt - 1)
                )
                log.warning(
                    "event handling failed (%s); retrying in %.2fs",
                    "transient" if failure.transient else f"permanent, {failure.reason}",
                    delay,
                    exc_info=exc,
                    extra=_record_fields(record) | {"attempt": attempt, "group": self._group_id},
                )
                if await self._stop_requested_within(delay):
                    raise _StopRequested from None

    async def _settle(self, producer: AIOKafkaProducer, record: ConsumerRecord[Any, Any]) -> None:
        # Any conforming CloudEvent (binary or structured mode) or a pre-CloudEvents envelope;
        # MalformedEventError: dead-lettered at once.
        decoded = decode_record(record.headers or (), record.key, record.value)
        event = ReceivedEvent(
            event=decoded,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            headers=dict(record.headers),
        )
        await self._handler(event)
        self.processed += 1

    async def _dead_letter(
        self,
        producer: AIOKafkaProducer,
        record: ConsumerRecord[Any, Any],
        error: Exception,
        reason: DeadLetterReason,
        attempts: int,
    ) -> None:
        topic = dead_letter_topic(record.topic)
        headers = [
            *record.headers,
            (HEADER_DLQ_REASON, str(reason).encode()),
            (HEADER_DLQ_ATTEMPTS, str(attempts).encode()),
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
            "event dead-lettered to %s (%s): %s",
            topic,
            reason,
            error,
            extra=_record_fields(record) | {"group": self._group_id},
        )

    async def _commit(
        self, consumer: AIOKafkaConsumer, partition: TopicPartition, next_offset: int
    ) -> None:
        try:
            async with self._commit_lock:
                await consumer.commit({partition: next_offset})
        except (CommitFailedError, KafkaError) as err:
            # The partition moved to another member (rebalance) or the coordinator is away;
            # the settled records will be redelivered and skipped by idempotent handlers.
            log.warning(
                "offset commit failed; records will be redelivered: %s",
                err,
                extra={"topic": partition.topic, "partition": partition.partition},
            )

    async def _unless_stopped(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result, unless `stop()` comes first: then it is cancelled and this
        raises `_StopRequested`. Starting and polling can wait for a group join (seconds on
        Tansu); nothing polled and not yet settled is committed, so nothing is lost."""
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((work, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled() or not work.done():
            raise _StopRequested
        return work.result()

    async def _stop_requested_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return False
        return True


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """Cancels the workers of partitions taken away in a rebalance."""

    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer._revoke(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


def _record_fields(record: ConsumerRecord[Any, Any]) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


async def _abandon_join(consumer: AIOKafkaConsumer) -> None:
    """Cancel a group join still in flight, so that stopping never waits for it.

    aiokafka's `stop()` waits for its coordination task, which may be blocked in a JoinGroup
    the broker answers only after a rebalance delay (seconds on Tansu, half the session timeout).
    A member that never joined has nothing to commit or leave. Uses aiokafka internals, hence
    the defensive lookups; if they change, stopping only waits for the join as before.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_coordination_task", None)
    if task is None or task.done() or getattr(coordinator, "generation", 0) != -1:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError


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
