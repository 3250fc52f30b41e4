"""The ledger's hot-path statements, built once with named parameters, and how they run.

SQLAlchemy caches a statement's compiled SQL under its cache key, but a
statement built afresh for every call must have that key computed again, and
on SQLite that cost more than running the statement (``bench.ledger``). Built
once here, each call only binds values.

``run`` goes one step further on the ledger's SQLite thread: there the
statement is compiled once and executed straight on the ``sqlite3``
connection, its values converted by the same SQLAlchemy types, because
SQLAlchemy's execution layer costs several times the statement itself (a quote
is four statements; ``bench.latency``). Elsewhere it is ``Connection.execute``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import CTE, bindparam, func, insert, literal, null, select, true, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable, ReturnsRows
from sqlalchemy.types import TypeEngine

from ledger.schema import UTCDateTime, accounts, generations, ledger_entries
from ledger.values import GenerationStatus


@dataclass(frozen=True)
class Ran:
    """What ``run`` hands back: rows changed, and the first row if the statement returns rows."""

    rowcount: int
    row: tuple[Any, ...] | None


def run(connection: Connection, statement: Executable, values: Mapping[str, Any]) -> Ran:
    """Execute ``statement`` with ``values`` in the connection's transaction.

    Only for statements whose results need no conversion (counts, integers,
    strings): on SQLite the row comes back as ``sqlite3`` gives it.
    """
    if connection.dialect.driver != "pysqlite":
        result = connection.execute(statement, values)
        first = result.first() if result.returns_rows else None
        return Ran(result.rowcount, None if first is None else tuple(first))
    sql, arguments = for_driver(statement, connection.dialect, values)
    cursor = connection.connection.driver_connection.execute(sql, arguments)
    return Ran(cursor.rowcount, cursor.fetchone() if cursor.description else None)


def for_driver(
    statement: Executable, dialect: Dialect, values: Mapping[str, Any]
) -> tuple[str, tuple[Any, ...]]:
    """``statement``'s SQL for ``dialect``'s driver, compiled once, and ``values`` as its arguments.

    For running a hot statement on the driver itself, past SQLAlchemy's
    execution layer. Only for results that need no conversion.
    """
    plain = _plain(statement, dialect, frozenset(values))
    return plain.sql, plain.arguments(values)


def from_driver(
    statement: Executable, dialect: Dialect, row: Iterable[tuple[str, Any]]
) -> dict[str, Any]:
    """A row of ``statement`` as the driver gave it, by name, converted as SQLAlchemy would.

    Each value goes through its column type's result processor (an aware UTC
    datetime from ``UTCDateTime``, for one), so what comes back is what
    executing the statement through SQLAlchemy reads.
    """
    readers = _readers(statement, dialect)
    return {
        name: value if (read := readers.get(name)) is None else read(value) for name, value in row
    }


_read_by: dict[tuple[int, str, str], tuple[Executable, Mapping[str, Callable[[Any], Any]]]] = {}
"""By statement, dialect and driver, with the statement itself, as ``_compiled``."""


def _readers(statement: Executable, dialect: Dialect) -> Mapping[str, Callable[[Any], Any]]:
    key = (id(statement), dialect.name, dialect.driver)
    found = _read_by.get(key)
    if found is None:
        columns = cast(ReturnsRows, statement).exported_columns
        processors = {
            column.key: column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in columns
        }
        found = _read_by[key] = (
            statement,
            {name: read for name, read in processors.items() if read is not None},
        )
    return found[1]


@dataclass(frozen=True)
class _Plain:
    """A statement compiled for sqlite3: its SQL, and how to turn values into its arguments."""

    sql: str
    literals: Mapping[str, Any]
    """Values the statement carries itself (such as a status it sets), by parameter name."""
    in_order: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    """The values in the order of the statement's ``?`` placeholders."""
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]
    """Each placeholder whose column type converts its value, and the converter."""

    def arguments(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        # Done by hand rather than by construct_params, which cost a third of a
        # quote's statement handling on the writer thread (bench.latency).
        ordered = self.in_order({**self.literals, **values} if self.literals else values)
        if not self.conversions:
            return ordered
        converted = list(ordered)
        for position, convert in self.conversions:
            converted[position] = convert(converted[position])
        return tuple(converted)


_compiled: dict[tuple[int, str, str, frozenset[str] | None], tuple[Executable, _Plain]] = {}
"""By statement, dialect and driver, and for an INSERT the columns given.

Each entry keeps its statement alive: a statement's ``id`` is only its own
while it lives, and one built for a single call (in a test, say) and then
dropped would otherwise hand its SQL to the next statement given its address.
The hot statements are module constants, so this holds a handful.
"""


def _plain(statement: Executable, dialect: Dialect, keys: frozenset[str]) -> _Plain:
    # An INSERT's column list follows the values given; other statements name their own.
    columns = keys if isinstance(statement, Insert) else None
    key = (id(statement), dialect.name, dialect.driver, columns)
    found = _compiled.get(key)
    if found is None:
        found = _compiled[key] = (statement, _compile_plain(statement, dialect, columns))
    return found[1]


def _compile_plain(
    statement: Executable, dialect: Dialect, columns: frozenset[str] | None
) -> _Plain:
    compiled = cast(
        SQLCompiler,
        statement.compile(
            dialect=dialect, column_keys=None if columns is None else sorted(columns)
        ),
    )
    names = tuple(compiled.positiontup or ())
    converters = [_converter(compiled.binds[name].type, dialect) for name in names]
    return _Plain(
        sql=compiled.string,
        literals={
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        },
        in_order=_getter(names),
        conversions=tuple(
            (position, convert)
            for position, convert in enumerate(converters)
            if convert is not None
        ),
    )


def _converter(bind_type: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    if isinstance(bind_type, UTCDateTime) and dialect.name == "sqlite":
        return UTCDateTime.sqlite_text
    return bind_type.dialect_impl(dialect).bind_processor(dialect)


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``names``' values as a tuple (``itemgetter`` alone gives a bare value for one name)."""
    if len(names) == 1:
        (name,) = names
        return lambda values: (values[name],)
    return itemgetter(*names)


GENERATION = select(generations).where(generations.c.id == bindparam("generation_id"))
"""One generation by ``generation_id``."""

LOCKED_GENERATION = GENERATION.with_for_update()
"""The same, locked until the transaction ends (on PostgreSQL; SQLite's writer lock covers it)."""

BALANCE = select(accounts.c.available, accounts.c.held).where(accounts.c.id == bindparam("account"))
"""``account``'s available and held credits."""

OPEN_ACCOUNT = {
    "sqlite": sqlite.insert(accounts).on_conflict_do_nothing(index_elements=["id"]),
    "postgresql": postgresql.insert(accounts).on_conflict_do_nothing(index_elements=["id"]),
}
"""By dialect: executed with a new account's column values; does nothing if it exists."""

HOLD_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.available >= bindparam("amount"))
    .values(
        available=accounts.c.available - bindparam("amount"),
        held=accounts.c.held + bindparam("amount"),
        updated_at=bindparam("now"),
    )
)
"""Move ``amount`` from available to held, only if it is available."""

SETTLE_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.held >= bindparam("was_held"))
    .values(
        held=accounts.c.held - bindparam("was_held"),
        available=accounts.c.available + bindparam("returned"),
        updated_at=bindparam("now"),
    )
)
"""End a hold of ``was_held``: ``returned`` of it goes back to available, the rest is spent."""

ADD_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"))
    .values(available=accounts.c.available + bindparam("amount"), updated_at=bindparam("now"))
)

TAKE_CREDITS = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.available >= bindparam("amount"))
    .values(available=accounts.c.available - bindparam("amount"), updated_at=bindparam("now"))
)
"""Remove ``amount`` available credits, only if they are there."""

NEW_ENTRY = insert(ledger_entries)
"""Executed with one entry's column values."""

ENTRY_BY_KEY = select(ledger_entries).where(ledger_entries.c.idempotency_key == bindparam("key"))

NEW_GENERATION = insert(generations)
"""Executed with one generation's column values."""

START_GENERATION = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        status=GenerationStatus.RUNNING,
        credits_held=bindparam("amount"),
        confirmed_at=bindparam("now"),
        heartbeat_at=bindparam("now"),
    )
    .returning(*generations.c)
)

FINISH_GENERATION = (
    update(generations)
    .where(generations.c.id == bindparam("generation_id"))
    .values(
        status=bindparam("new_status"),
        images_delivered=bindparam("delivered"),
        credits_held=0,
        credits_charged=bindparam("charged"),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        finished_at=bindparam("now"),
    )
    .returning(*generations.c)
)
"""Settle a running generation."""

MARK_POSTED = (
    update(generations)
    .where(
        generations.c.id == bindparam("generation_id"),
        generations.c.status == GenerationStatus.RUNNING,
    )
    .values(images_posted=bindparam("images"))
)

HEARTBEAT = (
    update(generations)
    .where(
        generations.c.id.in_(bindparam("generation_ids", expanding=True)),
        generations.c.status == GenerationStatus.RUNNING,
    )
    .values(heartbeat_at=bindparam("now"))
)

CLOSE_QUOTE = (
    update(generations)
    .where(
        generations.c.id == bindparam("generation_id"),
        generations.c.status == GenerationStatus.QUOTED,
    )
    .values(status=bindparam("new_status"), finished_at=bindparam("now"))
)
"""A quote's end without a hold: cancelled or expired."""


QUOTED_COLUMNS = (
    "id",
    "account_id",
    "model_id",
    "provider",
    "provider_model",
    "prompt",
    "options",
    "channel",
    "images_requested",
    "images_delivered",
    "credits_per_image",
    "credits_held",
    "credits_charged",
    "status",
    "created_at",
    "expires_at",
)
"""What a new quote's row is given; the rest of its columns start empty."""


def _parameter_for(column: Any) -> Any:
    """A parameter named and typed as ``column``."""
    return bindparam(column.name, type_=column.type)


LINE_FIELDS = (
    "kind",
    "amount",
    "available_delta",
    "held_delta",
    "actor",
    "reason",
    "idempotency_key",
)
"""An entry's own columns, as ``rules.Line`` holds them. Each is a parameter of
the statements below that write lines, named with the line's index after it
(``amount_0``); ``account`` is the account's."""

_ENTRY_COLUMNS = ("account_id", *LINE_FIELDS, "generation_id", "created_at")


def _entries_after(
    after: CTE, lines: int, *, generation_id: ColumnElement[Any] | None, created_at: Any
) -> Insert:
    """An INSERT of ``lines`` entries of ``account``, written only if ``after`` answers a row."""
    rows = [
        select(
            bindparam("account", type_=ledger_entries.c.account_id.type),
            *(
                bindparam(f"{name}_{index}", type_=ledger_entries.c[name].type)
                for name in LINE_FIELDS
            ),
            generation_id if generation_id is not None else null(),
            created_at,
            literal(index).label("line"),
        ).where(select(after).exists())
        for index in range(lines)
    ]
    written = union_all(*rows).subquery("written") if lines > 1 else rows[0].subquery("written")
    # In the lines' order, so that entries read back by id come out as the rule listed them.
    return insert(ledger_entries).from_select(
        _ENTRY_COLUMNS,
        select(*(column for column in written.c if column.name != "line")).order_by(written.c.line),
    )


def _open_quote_at_once(grants: int) -> Executable:
    opened = (
        postgresql.insert(accounts)
        .values(
            id=bindparam("account", type_=accounts.c.id.type),
            available=bindparam("starting_credits", type_=accounts.c.available.type),
            held=0,
            created_at=_parameter_for(accounts.c.created_at),
            updated_at=_parameter_for(accounts.c.created_at),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(accounts.c.available, accounts.c.held)
        .cte("opened")
    )
    # A statement sees the database as it was when it began: an account opened
    # above is in ``opened`` only, one that was there already in ``accounts`` only.
    balance = union_all(
        select(opened.c.available, opened.c.held),
        select(accounts.c.available, accounts.c.held).where(
            accounts.c.id == bindparam("account", type_=accounts.c.id.type)
        ),
    ).cte("balance")
    quoted = (
        insert(generations)
        .from_select(
            list(QUOTED_COLUMNS),
            select(*(_parameter_for(generations.c[name]) for name in QUOTED_COLUMNS)).where(
                balance.c.available >= bindparam("price", type_=accounts.c.available.type)
            ),
        )
        .returning(generations.c.id)
        .cte("quoted")
    )
    # One row whatever happened (available NULL if the balance was not there to
    # read), so that a group of these through ``fetchmany`` answers a row a run.
    at_once = select(
        select(balance.c.available).scalar_subquery(),
        select(balance.c.held).scalar_subquery(),
        select(func.count()).select_from(quoted).scalar_subquery(),
    ).where(_committed_without_waiting_for_disk())
    if grants:
        granted = _entries_after(
            opened,
            grants,
            generation_id=None,
            created_at=_parameter_for(ledger_entries.c.created_at),
        )
        at_once = at_once.add_cte(granted.cte("granted"))
    return at_once


def _committed_without_waiting_for_disk() -> ColumnElement[bool]:
    """A condition that holds, and makes the statement's own commit asynchronous.

    PostgreSQL flushes the WAL to disk before a commit returns; for a quote
    that wait was about 200 of its 550 µs (``bench.latency``). With
    ``synchronous_commit`` off for this transaction alone (``set_config``'s
    third argument), the commit returns at once and the WAL writer flushes it
    within a fraction of a second. A server crash in between loses the quote
    (and the account it opened) whole and never corrupts anything: any later
    durable commit, such as the hold that confirms this quote, first flushes
    everything written before it. So what can be lost is only a quote nobody
    has confirmed, and its click then answers that the request no longer exists.
    Holds, settlements and grants keep waiting for the disk.
    """
    return func.set_config("synchronous_commit", "off", true()).is_not(None)


OPEN_QUOTE_AT_ONCE = {grants: _open_quote_at_once(grants) for grants in (0, 1)}
"""PostgreSQL only, by the number of ``rules.opening`` lines: ``Ledger.open_quote`` in one statement.

Opens the account with ``starting_credits`` if it is new, writing its opening
lines (``LINE_FIELDS``) only then, and records the quote
(``QUOTED_COLUMNS``) if ``price`` is available; answers one row, (available,
held, quotes recorded), with available and held NULL when another connection
opened the same new account at the same moment (the caller then takes the
transactional way).
Data-modifying CTEs are PostgreSQL's; SQLite runs the same steps as separate
statements on its ledger thread, where a statement costs no round trip.
"""

QUOTE_AND_BALANCE = select(
    generations,
    select(accounts.c.available)
    .where(accounts.c.id == bindparam("account"))
    .scalar_subquery()
    .label("available"),
).where(generations.c.id == bindparam("generation_id"))
"""PostgreSQL: the quote ``generation_id`` and what ``account`` has available, for ``rules.hold``."""


HOLD_READS = ("account_id", "status", "images_requested", "credits_per_image", "expires_at")
"""The quote's columns ``rules.hold`` decides on; ``HOLD_AT_ONCE`` applies only while they are
as read, each given as a parameter named ``read_`` and the column's name."""

SETTLEMENT_READS = ("account_id", "status", "images_requested", "credits_per_image", "credits_held")
"""The generation's columns ``rules.settlement`` decides on, for ``SETTLE_AT_ONCE`` likewise."""


def _as_read(columns: tuple[str, ...]) -> tuple[ColumnElement[bool], ...]:
    """The generation ``generation_id`` with ``columns`` still as a rule read them."""
    return (
        generations.c.id == bindparam("generation_id"),
        *(
            generations.c[name] == bindparam(f"read_{name}", type_=generations.c[name].type)
            for name in columns
        ),
    )


def _hold_at_once() -> Executable:
    quote = select(generations.c.id).where(*_as_read(HOLD_READS)).with_for_update().cte("quote")
    took = HOLD_CREDITS.where(select(quote).exists()).returning(accounts.c.id).cte("took")
    entry = _entries_after(
        took,
        1,
        generation_id=bindparam("generation_id", type_=ledger_entries.c.generation_id.type),
        created_at=bindparam("now", type_=ledger_entries.c.created_at.type),
    )
    started = START_GENERATION.where(select(took).exists()).cte("started")
    return select(started).add_cte(entry.cte("entry"))


HOLD_AT_ONCE = _hold_at_once()
"""PostgreSQL only: a ``rules.Hold`` applied in one statement, if its quote is still as read.

Locks the quote if it is still as read (``HOLD_READS``), then moves
``amount`` from available to held if it is still available (``HOLD_CREDITS``),
writes the hold's line and starts the generation (``START_GENERATION``).
Answers the started generation, or no row when nothing was applied.
"""


def _settle_at_once(lines: int) -> Executable:
    running = (
        select(generations.c.id).where(*_as_read(SETTLEMENT_READS)).with_for_update().cte("running")
    )
    paid = SETTLE_CREDITS.where(select(running).exists()).returning(accounts.c.id).cte("paid")
    entries = _entries_after(
        paid,
        lines,
        generation_id=bindparam("generation_id", type_=ledger_entries.c.generation_id.type),
        created_at=bindparam("now", type_=ledger_entries.c.created_at.type),
    )
    finished = FINISH_GENERATION.where(select(paid).exists()).cte("finished")
    return select(finished).add_cte(entries.cte("entries"))


SETTLE_AT_ONCE = {lines: _settle_at_once(lines) for lines in (1, 2)}
"""PostgreSQL only, by the number of its lines: a ``rules.Settlement`` applied in one statement.

Locks the generation if it is still as read (``SETTLEMENT_READS``), then ends
its hold (``SETTLE_CREDITS``, only if the account holds it), writes the
settlement's lines and finishes the generation (``FINISH_GENERATION``).
Answers the finished generation, or no row when nothing was applied.
"""
