"""SQLStoreBase: the part of a SQL :class:`~dripcore.ports.Store` that does not depend on the dialect.

Both SQL stores (:mod:`dripcore.adapters.sqlite`, :mod:`dripcore.adapters.postgres`) read
sequences, enrollments, outbox messages and counters the same way: validate the
arguments, build a WHERE clause, run one read, decode each row or set it aside as
unreadable. That part lives here, once. What differs is reached through a few hooks a
store defines: how to run one read (:meth:`SQLStoreBase._read_all`), how a table is
named, how a parameter is written, how a row decodes. The hot paths (claim, commit,
settle) and every write stay in each store: their transactions, locking and statements
are where the two databases differ most, and where each is tuned.

A private module of :mod:`dripcore.adapters` (not an API for other adapters yet): an
adapter author starts from :class:`~dripcore.ports.Store` and the contract kit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from datetime import datetime
from typing import Any

from .._checks import (
    check_count,
    check_counters,
    check_enum,
    check_enums,
    check_id,
    check_instant,
    check_key,
    check_opt_enum,
    check_opt_id,
    check_opt_position,
)
from ..errors import CorruptRecord
from ..model import Enrollment, EnrollmentStatus, Sequence, SequenceStatus, to_utc
from ..ports import BrokenRecord, Counter, EnrollmentOrder, OutboxMessage, OutboxStatus, Store
from ..serialization import make_converter
from ._common import describe, sum_counters

__all__ = ["SQLStoreBase"]

# Decoded sequences kept per store, by their stored body (a claim reads a handful of them over and over).
_SEQUENCE_CACHE_SIZE = 256


class SQLStoreBase(Store):
    """The dialect-independent reads and decoding of a SQL store; see the module docstring.

    A subclass sets the class attributes (its SQL for the column lists, its placeholder)
    and defines the hooks: :meth:`_table`, :meth:`_read_all`, :meth:`_in_texts`,
    :meth:`_enrollment_from_row`, :meth:`_message_from_row`, :meth:`_write_counter_totals`
    and :meth:`_prune_batch`. ``_where`` names the database in errors (a path, or a server).
    """

    #: The enrollment columns a row decoder takes, in its order, as SQL.
    _enrollment_columns: str
    #: The outbox columns a message decoder takes, in its order, as SQL.
    _outbox_columns: str
    #: The SQL of a sequence's body read as text.
    _sequence_body: str = "body"
    #: The parameter placeholder of the driver.
    _param: str = "?"
    #: ORDER BY for :attr:`EnrollmentOrder.NEXT_DUE`: soonest first, no due time last, then id.
    _next_due_order: str = "next_due IS NULL, next_due, id"

    def __init__(self, where: str, log: logging.Logger) -> None:
        self._where = where
        self._log = log
        self._converter = make_converter()
        self._sequence_cache: dict[str, Sequence] = {}

    # ------------------------------------------------------------------ hooks

    def _table(self, name: str) -> str:
        """The SQL name of the store's table ``name``."""
        return name

    def _read_all(self, action: str, sql: str, params: Seq[Any] = ()) -> list[Any]:
        """The rows of one read-only statement; errors translated for ``action``."""
        raise NotImplementedError

    def _in_texts(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        """A condition "``column`` is one of ``values``" and its parameters."""
        return f"{column} IN ({', '.join([self._param] * len(values))})", list(values)

    @staticmethod
    def _enrollment_from_row(row: Seq[Any]) -> Enrollment:
        """Decode an enrollment row (``_enrollment_columns``); any exception means unreadable."""
        raise NotImplementedError

    @staticmethod
    def _message_from_row(row: Seq[Any]) -> OutboxMessage:
        """Decode an outbox row (``_outbox_columns``); any exception means unreadable."""
        raise NotImplementedError

    def _write_counter_totals(self, totals: Mapping[tuple[str, int, str], int]) -> None:
        """Add summed counter increments, in one transaction."""
        raise NotImplementedError

    def _prune_batch(self, cutoff: datetime, batch_size: int) -> int:
        """Delete up to ``batch_size`` settled messages settled before ``cutoff`` (UTC), in one
        transaction; return how many."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decoding

    def _decode_sequence(self, sequence_id: str, body: str) -> Sequence:
        cached = self._sequence_cache.get(body)
        if cached is not None:
            return cached
        try:
            sequence = self._converter.structure(json.loads(body), Sequence)
        except Exception as exc:
            raise CorruptRecord(self._where, "sequences", sequence_id, describe(exc)) from exc
        if len(self._sequence_cache) >= _SEQUENCE_CACHE_SIZE:
            self._sequence_cache.clear()
        self._sequence_cache[body] = sequence
        return sequence

    def _decode_enrollment(self, row: Seq[Any]) -> Enrollment:
        try:
            return self._enrollment_from_row(row)
        except Exception as exc:
            raise CorruptRecord(self._where, "enrollments", str(row[0]), describe(exc)) from exc

    def _claimed_records(self, rows: Iterable[Seq[Any]]) -> list[Enrollment | BrokenRecord]:
        """Claimed enrollment rows decoded; an unreadable one comes back as a :class:`BrokenRecord`."""
        claimed: list[Enrollment | BrokenRecord] = []
        decode = self._enrollment_from_row
        for row in rows:
            try:
                claimed.append(decode(row))
            except Exception as exc:
                claimed.append(BrokenRecord(id=str(row[0]), error=describe(exc)))
        return claimed

    def _readable_messages(self, rows: Iterable[Seq[Any]]) -> list[OutboxMessage]:
        """Outbox rows decoded; an unreadable one is logged and left out."""
        found = []
        for row in rows:
            try:
                found.append(self._message_from_row(row))
            except Exception as exc:
                self._log.error("%s", CorruptRecord(self._where, "outbox", str(row[0]), describe(exc)))
        return found

    # ------------------------------------------------------------------ sequences

    def get_sequence(self, sequence_id: str) -> Sequence | None:
        """The sequence, or None; :class:`~dripcore.errors.CorruptRecord` if its row can't be read."""
        sequence_id = check_id(sequence_id, "sequence_id")
        p = self._param
        rows = self._read_all(
            "get a sequence", f"SELECT {self._sequence_body} FROM {self._table('sequences')} WHERE id = {p}",
            (sequence_id,),
        )  # fmt: skip
        return None if not rows else self._decode_sequence(sequence_id, rows[0][0])

    def list_sequences(self, status: SequenceStatus | None = None) -> list[Sequence]:
        """All sequences (of one status), ordered by id; unreadable rows are logged and left out."""
        status = check_opt_enum(status, SequenceStatus, "status")
        select = f"SELECT id, {self._sequence_body} FROM {self._table('sequences')}"
        if status is None:
            rows = self._read_all("list sequences", f"{select} ORDER BY id")
        else:
            where = f"WHERE status = {self._param}"
            rows = self._read_all("list sequences", f"{select} {where} ORDER BY id", (status.value,))
        found = []
        for sequence_id, body in rows:
            try:
                sequence = self._decode_sequence(sequence_id, body)
            except CorruptRecord as exc:
                self._log.error("%s", exc)
                continue
            if status is None or sequence.status is status:
                found.append(sequence)
        return found

    # ------------------------------------------------------------------ enrollments

    def get_enrollment(self, enrollment_id: str) -> Enrollment | None:
        """The enrollment, or None; :class:`~dripcore.errors.CorruptRecord` if its row can't be read."""
        enrollment_id = check_id(enrollment_id, "enrollment_id")
        rows = self._read_all(
            "get an enrollment",
            f"SELECT {self._enrollment_columns} FROM {self._table('enrollments')} WHERE id = {self._param}",
            (enrollment_id,),
        )
        return None if not rows else self._decode_enrollment(rows[0])

    def find_enrollments(
        self,
        *,
        sequence_id: str | None = None,
        contact_id: str | None = None,
        statuses: Iterable[EnrollmentStatus] | None = None,
        limit: int = 50,
        offset: int = 0,
        after: str | None = None,
        last_step_sent: int | None = None,
        order: EnrollmentOrder = EnrollmentOrder.ID,
    ) -> list[Enrollment]:
        """Enrollments matching every filter, ordered by id or next due time (unreadable rows are
        logged and left out)."""
        sequence_id = check_opt_id(sequence_id, "sequence_id")
        contact_id = check_opt_id(contact_id, "contact_id")
        statuses = check_enums(statuses, EnrollmentStatus, "statuses")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        after = check_opt_id(after, "after")
        last_step_sent = check_opt_position(last_step_sent, "last_step_sent")
        order = check_enum(order, EnrollmentOrder, "order")
        p = self._param
        where: list[str] = []
        params: list[Any] = []
        if sequence_id is not None:
            where.append(f"sequence_id = {p}")
            params.append(sequence_id)
        if contact_id is not None:
            where.append(f"contact_id = {p}")
            params.append(contact_id)
        if statuses is not None:
            values = sorted({s.value for s in statuses})
            if not values:
                return []
            condition, values_params = self._in_texts("status", values)
            where.append(condition)
            params.extend(values_params)
        if after is not None:
            where.append(f"id > {p}")
            params.append(after)
        if last_step_sent is not None:
            where.append(f"last_step_sent = {p}")
            params.append(last_step_sent)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order_by = self._next_due_order if order is EnrollmentOrder.NEXT_DUE else "id"
        params.extend((limit, offset))
        rows = self._read_all(
            "find enrollments",
            f"SELECT {self._enrollment_columns} FROM {self._table('enrollments')} {clause} "
            f"ORDER BY {order_by} LIMIT {p} OFFSET {p}",
            params,
        )
        found = []
        for row in rows:
            try:
                found.append(self._decode_enrollment(row))
            except CorruptRecord as exc:
                self._log.error("%s", exc)
        return found

    # ------------------------------------------------------------------ outbox

    def get_message(self, key: str) -> OutboxMessage | None:
        """The outbox message with that key, or None; :class:`~dripcore.errors.CorruptRecord` if its
        row can't be read."""
        key = check_key(key)
        rows = self._read_all(
            "get an outbox message",
            f"SELECT {self._outbox_columns} FROM {self._table('outbox')} WHERE key = {self._param}",
            (key,),
        )
        if not rows:
            return None
        try:
            return self._message_from_row(rows[0])
        except Exception as exc:
            raise CorruptRecord(self._where, "outbox", key, describe(exc)) from exc

    def find_messages(
        self, *, status: OutboxStatus | None = None, enrollment_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[OutboxMessage]:
        """Outbox messages matching the filters, ordered by ``(created_at, key)``."""
        status = check_opt_enum(status, OutboxStatus, "status")
        enrollment_id = check_opt_id(enrollment_id, "enrollment_id")
        limit, offset = check_count(limit, "limit"), check_count(offset, "offset")
        p = self._param
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append(f"status = {p}")
            params.append(status.value)
        if enrollment_id is not None:
            where.append(f"enrollment_id = {p}")
            params.append(enrollment_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.extend((limit, offset))
        rows = self._read_all(
            "find outbox messages",
            f"SELECT {self._outbox_columns} FROM {self._table('outbox')} {clause} "
            f"ORDER BY created_at, key LIMIT {p} OFFSET {p}",
            params,
        )
        return self._readable_messages(rows)

    def prune_messages(self, settled_before: datetime, *, batch_size: int = 10_000) -> int:
        """Delete DELIVERED and FAILED outbox messages settled before ``settled_before``; return how many.

        The outbox otherwise grows by one row per email. Keep at least as much
        history as the longest frequency-cap window (:meth:`count_messages`
        counts what is left). Deletes in batches, one short transaction each,
        so workers sharing the database are never held up for long.
        """
        settled_before = check_instant(settled_before, "settled_before")
        batch_size = check_count(batch_size, "batch_size", minimum=1)
        cutoff = to_utc(settled_before, "settled_before")
        total = 0
        while True:
            deleted = self._prune_batch(cutoff, batch_size)
            total += max(deleted, 0)
            if deleted < batch_size:
                return total

    # ------------------------------------------------------------------ counters

    def bump(self, counters: Seq[Counter]) -> None:
        """Apply counter increments in one transaction."""
        counters = check_counters(counters)
        totals: dict[tuple[str, int, str], int] = {}
        sum_counters(counters, totals)
        if any(totals.values()):
            self._write_counter_totals(totals)
