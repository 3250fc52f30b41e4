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

from sqlalchemy import bindparam, case, func, insert, literal, select, true, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable, ReturnsRows
from sqlalchemy.types import TypeEngine

from ledger.schema import UTCDateTime, accounts, generations, ledger_entries
from ledger.values import EntryKind, GenerationStatus


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
    .where(generations.c.id == bindparam("generation_id"))
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


_ENTRY_COLUMNS = (
    "account_id",
    "kind",
    "amount",
    "available_delta",
    "held_delta",
    "actor",
    "reason",
    "idempotency_key",
    "generation_id",
    "created_at",
)
"""What an entry written for a generation is given; the rest of its columns are the database's."""


def _open_quote_at_once() -> Executable:
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
    granted = insert(ledger_entries).from_select(
        [name for name in _ENTRY_COLUMNS if name != "generation_id"],
        select(
            bindparam("account", type_=ledger_entries.c.account_id.type),
            literal(EntryKind.GRANT.value, ledger_entries.c.kind.type),
            opened.c.available,
            opened.c.available,
            literal(0, ledger_entries.c.held_delta.type),
            bindparam("grant_actor", type_=ledger_entries.c.actor.type),
            bindparam("grant_reason", type_=ledger_entries.c.reason.type),
            bindparam("grant_key", type_=ledger_entries.c.idempotency_key.type),
            _parameter_for(ledger_entries.c.created_at),
        ).where(opened.c.available > 0),
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
    return (
        select(
            balance.c.available,
            balance.c.held,
            select(func.count()).select_from(quoted).scalar_subquery(),
        )
        .add_cte(granted.cte("granted"))
        .where(_committed_without_waiting_for_disk())
    )


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


OPEN_QUOTE_AT_ONCE = _open_quote_at_once()
"""PostgreSQL only: ``Ledger.open_quote`` in one statement, so in one round trip.

Opens the account with ``starting_credits`` and its starting grant if it is
new, and records the quote (``QUOTED_COLUMNS``) if ``price`` is available;
answers one row, (available, held, quotes recorded), or none when another
connection opened the same new account at the same moment (the caller then
takes the transactional way). Data-modifying CTEs are PostgreSQL's; SQLite
runs the same steps as separate statements on its ledger thread, where a
statement costs no round trip.
"""


def _hold_at_once() -> Executable:
    generation_id = bindparam("generation_id", type_=generations.c.id.type)
    account = bindparam("account", type_=accounts.c.id.type)
    now = bindparam("now", type_=generations.c.confirmed_at.type)
    quote = (
        select(generations).where(generations.c.id == generation_id).with_for_update().cte("quote")
    )
    price = quote.c.images_requested * quote.c.credits_per_image
    holds = (
        quote.c.account_id == account,
        quote.c.status == GenerationStatus.QUOTED.value,
    )
    took = (
        update(accounts)
        .where(
            accounts.c.id == quote.c.account_id,
            *holds,
            quote.c.expires_at > now,
            accounts.c.available >= price,
        )
        .values(
            available=accounts.c.available - price,
            held=accounts.c.held + price,
            updated_at=now,
        )
        .returning(price.label("price"), quote.c.id.label("generation_id"))
        .cte("took")
    )
    entry = insert(ledger_entries).from_select(
        _ENTRY_COLUMNS,
        select(
            account,
            literal(EntryKind.HOLD.value, ledger_entries.c.kind.type),
            took.c.price,
            -took.c.price,
            took.c.price,
            account,
            literal("hold for generation ", ledger_entries.c.reason.type) + generation_id,
            literal("hold:", ledger_entries.c.idempotency_key.type) + generation_id,
            generation_id,
            now,
        ),
    )
    started = (
        update(generations)
        .where(generations.c.id == took.c.generation_id)
        .values(
            status=GenerationStatus.RUNNING.value,
            credits_held=took.c.price,
            confirmed_at=now,
            heartbeat_at=now,
        )
        .returning(*generations.c)
        .cte("started")
    )
    expired = (
        update(generations)
        .where(generations.c.id == quote.c.id, *holds, quote.c.expires_at <= now)
        .values(status=GenerationStatus.EXPIRED.value, finished_at=now)
    )
    return (
        select(
            quote.c.account_id.label("quoted_for"),
            quote.c.status.label("quoted_status"),
            quote.c.expires_at.label("quoted_until"),
            price.label("price"),
            select(accounts.c.available)
            .where(accounts.c.id == account)
            .scalar_subquery()
            .label("available"),
            *started.c,
        )
        .select_from(quote.outerjoin(started, true()))
        .add_cte(entry.cte("entry"), expired.cte("expired"))
    )


HOLD_AT_ONCE = _hold_at_once()
"""PostgreSQL only: ``Ledger.hold`` in one statement, so in one round trip instead of six.

Locks the quote, moves its price from available to held if the quote is the
account's, still quoted, unexpired and affordable, records the hold entry and
starts the generation; an expired quote is marked expired instead. Answers
no row for an unknown generation; otherwise the quote as it was (``quoted_for``,
``quoted_status``, ``quoted_until``, ``price``), the account's ``available``
before, and the started generation's columns, all null if nothing was held.
"""


def _settle_at_once() -> Executable:
    generation_id = bindparam("generation_id", type_=generations.c.id.type)
    now = bindparam("now", type_=generations.c.finished_at.type)
    code = bindparam("code", type_=generations.c.error_code.type)
    running = (
        select(generations)
        .where(generations.c.id == generation_id)
        .with_for_update()
        .cte("running")
    )
    delivered = func.least(
        func.greatest(bindparam("delivered", type_=generations.c.images_delivered.type), 0),
        running.c.images_requested,
    )
    settling = (
        select(
            running.c.id,
            running.c.account_id,
            running.c.images_requested,
            running.c.credits_per_image,
            running.c.credits_held.label("was_held"),
            delivered.label("delivered"),
            (delivered * running.c.credits_per_image).label("charged"),
        )
        .where(running.c.status == GenerationStatus.RUNNING.value)
        .cte("settling")
    )
    returned = settling.c.was_held - settling.c.charged
    paid = (
        update(accounts)
        .where(accounts.c.id == settling.c.account_id, accounts.c.held >= settling.c.was_held)
        .values(
            held=accounts.c.held - settling.c.was_held,
            available=accounts.c.available + returned,
            updated_at=now,
        )
        .returning(*settling.c, returned.label("returned"))
        .cte("paid")
    )
    text = ledger_entries.c.reason.type
    capture = select(
        paid.c.account_id,
        literal(EntryKind.CAPTURE.value, ledger_entries.c.kind.type).label("kind"),
        paid.c.charged.label("amount"),
        literal(0, ledger_entries.c.available_delta.type).label("available_delta"),
        (-paid.c.charged).label("held_delta"),
        func.concat(
            paid.c.delivered,
            literal(" of ", text),
            paid.c.images_requested,
            literal(" images delivered", text),
        ).label("reason"),
        (literal("capture:", text) + paid.c.id).label("idempotency_key"),
        paid.c.id.label("generation_id"),
        literal(1).label("written"),
    ).where(paid.c.charged > 0)
    release = select(
        paid.c.account_id,
        literal(EntryKind.RELEASE.value, ledger_entries.c.kind.type),
        paid.c.returned,
        paid.c.returned,
        -paid.c.returned,
        func.coalesce(
            func.nullif(code, ""),
            func.concat(
                paid.c.returned // paid.c.credits_per_image,
                literal(" of ", text),
                paid.c.images_requested,
                literal(" images not delivered", text),
            ),
        ),
        literal("release:", text) + paid.c.id,
        paid.c.id,
        literal(2),
    ).where(paid.c.returned > 0)
    # One INSERT, in this order, so the capture's entry comes before the release's,
    # as when they are written one after the other.
    settled = union_all(capture, release).subquery("settled")
    entries = insert(ledger_entries).from_select(
        _ENTRY_COLUMNS,
        select(
            settled.c.account_id,
            settled.c.kind,
            settled.c.amount,
            settled.c.available_delta,
            settled.c.held_delta,
            literal("system", ledger_entries.c.actor.type),
            settled.c.reason,
            settled.c.idempotency_key,
            settled.c.generation_id,
            now,
        ).order_by(settled.c.written),
    )
    finished = (
        update(generations)
        .where(generations.c.id == paid.c.id)
        .values(
            status=case(
                (paid.c.delivered == paid.c.images_requested, GenerationStatus.COMPLETED.value),
                (paid.c.delivered > 0, GenerationStatus.PARTIAL.value),
                else_=GenerationStatus.FAILED.value,
            ),
            images_delivered=paid.c.delivered,
            credits_held=0,
            credits_charged=paid.c.charged,
            error_code=code,
            error_message=bindparam("message", type_=generations.c.error_message.type),
            finished_at=now,
        )
        .returning(*generations.c)
        .cte("finished")
    )
    return (
        select(
            *(column.label(f"was_{column.name}") for column in running.c),
            *finished.c,
        )
        .select_from(running.outerjoin(finished, true()))
        .add_cte(entries.cte("entries"))
    )


SETTLE_AT_ONCE = _settle_at_once()
"""PostgreSQL only: ``Ledger.capture`` and ``release`` in one statement, as ``Ledger._settle``.

Locks the generation; if it is running and its hold is there, charges
``delivered`` (clamped to what was asked) times the price per image, returns
the rest of the hold, records the capture and release entries, and finishes
the generation with ``code`` and ``message``. Answers no row for an unknown
generation; otherwise the generation as it was (``was_`` before each column
name) and the finished generation's columns, all null if nothing was settled.
"""
