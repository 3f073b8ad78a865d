"""Reply sizes: whatever is stored must be retrievable within the gRPC message limit.

A receipt is served as its service envelope, its content decoded from that envelope (never
larger than the statement JSON, itself three quarters of the base64 envelope) and the
caller's envelope, if any. So the bytes a receipt adds to a reply are bounded by
`receipt_reply_bytes`, computed from stored sizes before anything is stored: a receipt, or a
batch, whose reply could not be sent is refused, and List pages stop at a byte budget as well
as at `page_size` (see docs/adr/0033-retrievable-by-construction.md).
"""

from __future__ import annotations

from typing import Final

from mc_common.server import MAX_MESSAGE_BYTES

REPLY_OVERHEAD_BYTES: Final = 2048
"""Per receipt: digests, ids, timestamps, the verification result and field framing."""
MAX_RECEIPT_REPLY_BYTES: Final = 1024 * 1024
"""Most one receipt may add to a reply: a GetReceipt reply always fits, with room to spare."""
MAX_REPLY_BYTES: Final = MAX_MESSAGE_BYTES - 64 * 1024
"""Budget of a whole reply (a RecordReceipts batch, a List page): the limit minus framing."""


def receipt_reply_bytes(envelope_bytes: int, client_envelope_bytes: int) -> int:
    """An upper bound of what one receipt adds to a reply, from its stored sizes."""
    return envelope_bytes + (envelope_bytes * 3) // 4 + client_envelope_bytes + REPLY_OVERHEAD_BYTES


def text_bytes(*values: str) -> int:
    """UTF-8 bytes of `values` plus framing: what text fields add to a reply."""
    return sum(len(v.encode()) + 8 for v in values)
