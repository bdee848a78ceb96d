"""The store: subscribers, the send ledger, delivery events and signups in one database,
a SQLite file or PostgreSQL. `Store` is the one entry point; this package re-exports it
with its records and errors, so callers import from `highlightsmail.store`.

records.py the record types and the status order; engine.py the protocol the engines
(sqlite.py, postgresql.py) fulfil and the errors; migrator.py with sql/<engine>/ the
schema; one part per kind of data (subscribers, ledger, deliveries, signups, schedules,
copying);
facade.py the Store made of them."""

from highlightsmail.store.engine import (
    MergedAddressesWarning,
    NoHighlightsData,
    OutdatedSchema,
    UnknownSubscriber,
    UnusableDatabase,
)
from highlightsmail.store.facade import Store
from highlightsmail.store.messages import KeptMessage
from highlightsmail.store.migrator import SCHEMA_VERSION
from highlightsmail.store.records import (
    DELIVERY_KINDS,
    DELIVERY_STATES,
    SCHEDULE_STATES,
    SOURCES,
    STATUSES,
    SUPPRESSED,
    UNDELIVERABLE,
    Consent,
    Delivery,
    DeliveryEventRow,
    DeliveryKind,
    DeliveryState,
    DispatchInfo,
    Event,
    ImportResult,
    ImportRow,
    Place,
    RecordResult,
    Schedule,
    ScheduleState,
    Source,
    Status,
    Subscriber,
    TestSend,
    format_time,
)
from highlightsmail.store.signups import Joining

__all__ = [
    "DELIVERY_KINDS",
    "DELIVERY_STATES",
    "SCHEDULE_STATES",
    "SCHEMA_VERSION",
    "SOURCES",
    "STATUSES",
    "SUPPRESSED",
    "UNDELIVERABLE",
    "Consent",
    "Delivery",
    "DeliveryEventRow",
    "DeliveryKind",
    "DeliveryState",
    "DispatchInfo",
    "Event",
    "ImportResult",
    "ImportRow",
    "Joining",
    "KeptMessage",
    "MergedAddressesWarning",
    "NoHighlightsData",
    "OutdatedSchema",
    "Place",
    "RecordResult",
    "Schedule",
    "ScheduleState",
    "Source",
    "Status",
    "Store",
    "Subscriber",
    "TestSend",
    "UnknownSubscriber",
    "UnusableDatabase",
    "format_time",
]
