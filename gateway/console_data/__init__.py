"""The operator console's data: service-layer reads for its pages (gateway/console) and ops tools (docs/quarantine.md).

Each function takes the request's read session (bound to the caller's service when it has one: gateway.platform.store.visibility)
and returns typed dataclasses; none writes, except `message_detail`'s audit of a raw-body view.
"""

from gateway.console_data.counts import (
    BUSY_NOT_STORED,
    CHANNELS,
    DESTINATIONS,
    ChannelCounts,
    DestinationCounts,
    channel_counts,
    outbound_counts,
)
from gateway.console_data.messages import OUTCOMES, PAGE_SIZE, LogEntry, MessageDetail, MessagePage, message_detail, message_log
from gateway.console_data.queues import ServiceQueue, TreatmentTarget, WaitLine, WaitlistService, queue_colours, waitlist_summary

__all__ = [
    "BUSY_NOT_STORED",
    "CHANNELS",
    "DESTINATIONS",
    "OUTCOMES",
    "PAGE_SIZE",
    "ChannelCounts",
    "DestinationCounts",
    "LogEntry",
    "MessageDetail",
    "MessagePage",
    "ServiceQueue",
    "TreatmentTarget",
    "WaitLine",
    "WaitlistService",
    "channel_counts",
    "message_detail",
    "message_log",
    "outbound_counts",
    "queue_colours",
    "waitlist_summary",
]
