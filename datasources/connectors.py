"""Reading a team's database: its schema, and the result of one checked query (datasources.sql_guard),
for PostgreSQL and MySQL/MariaDB (by DSN) and SQLite (an uploaded file).

Every query runs under the second and third walls: a read-only transaction on a connection whose
session defaults are read-only (PostgreSQL), a read-only session and transaction (MySQL), or a
read-only, query-only connection with an
authorizer that lets it read the allowed tables and nothing else (SQLite); a statement timeout;
and a row cap (rows are fetched one batch past the cap, never the whole result).
"""

from __future__ import annotations

import datetime
import decimal
import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import pymysql
import pymysql.cursors
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.domain_errors import DomainError
from core.outbound import UnsafeUrl, outbound_host_check

CONNECT_TIMEOUT_S = 5
MAX_CELL_CHARS = 2000
SQLITE_HEADER = b"SQLite format 3\x00"
# What a DSN may set. Everything else (passfile, sslkey, service, ...) would make the server read
# its own files or configuration on a user's say.
DSN_KEYS = frozenset({"host", "port", "dbname", "user", "password", "sslmode", "application_name"})
SSL_MODES = frozenset({"disable", "allow", "prefer", "require"})
POSTGRES_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


class DataSourceUnreachable(DomainError):
    """The database refused the connection or could not be reached."""

    status_code = 400
    code = "data_source_unreachable"


class QueryFailed(DomainError):
    """The database refused a checked query (a wrong column, a type error, the timeout)."""

    status_code = 400
    code = "query_failed"


class NotASqliteFile(DomainError):
    status_code = 400
    code = "not_a_sqlite_file"


@dataclass(frozen=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True)
class TableInfo:
    name: str  # `schema.table` (PostgreSQL) or `table` (SQLite), lower case as the guard compares
    columns: list[Column]
    sample_rows: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool


def json_cell(value: Any) -> Any:
    """A value as JSON can carry it (and as a person reads it)."""
    if value is None or isinstance(value, bool | int | str):
        return value if not isinstance(value, str) else value[:MAX_CELL_CHARS]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)[:MAX_CELL_CHARS]


def timeout_message(timeout_s: float) -> str:
    return f"the query ran past the {timeout_s:g} s limit: narrow it (a WHERE, a LIMIT)"


# --- PostgreSQL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresTarget:
    """A DSN that passed the checks, and the address approved for it."""

    params: dict[str, str]
    hostaddr: str

    def conninfo(self, *, timeout_s: float) -> str:
        options = f"-c default_transaction_read_only=on -c statement_timeout={int(timeout_s * 1000)}"
        return make_conninfo(
            **self.params, hostaddr=self.hostaddr, connect_timeout=str(CONNECT_TIMEOUT_S), options=options
        )


def postgres_target(dsn: str) -> PostgresTarget:
    """Check a user's DSN (URL or key=value form): only the keys in DSN_KEYS, one TCP host that the
    SSRF guard allows (a socket path would reach the server's own databases). The connection goes
    to the approved address (`hostaddr`), so DNS cannot answer differently later."""
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(dsn.strip()).items() if value is not None}
    except psycopg.ProgrammingError as exc:
        raise DataSourceUnreachable(
            f"the DSN could not be read ({exc}): write it as postgresql://user:pass@host:5432/db"
        ) from exc
    unknown = sorted(set(params) - DSN_KEYS)
    if unknown:
        raise UnsafeUrl(f"the DSN may not set {', '.join(unknown)}: only {', '.join(sorted(DSN_KEYS))}")
    host = params.get("host", "")
    if not host or host.startswith("/") or "," in host or "@" in host:
        raise UnsafeUrl("the DSN must name one database server by host name or address (no socket path, no list)")
    if params.get("sslmode", "prefer") not in SSL_MODES:
        raise UnsafeUrl(f"sslmode must be one of {', '.join(sorted(SSL_MODES))}")
    try:
        port = int(params.get("port", "5432"))
    except ValueError as exc:
        raise UnsafeUrl(f"the port {params.get('port')!r} is not a number") from exc
    if not params.get("dbname"):
        raise DataSourceUnreachable("the DSN names no database: add /dbname (or dbname=...)")
    addresses = outbound_host_check(host, port)
    return PostgresTarget(params=params, hostaddr=str(addresses[0]))


def _postgres_connect(target: PostgresTarget, *, timeout_s: float) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(target.conninfo(timeout_s=timeout_s))
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataSourceUnreachable(
            f"could not connect to {target.params['host']}: {reason}; check the DSN and that the server accepts us"
        ) from exc


def postgres_introspect(target: PostgresTarget, *, sample_rows: int, timeout_s: float) -> list[TableInfo]:
    """Tables and views outside the system schemas, with their columns and a few rows each."""
    with _postgres_connect(target, timeout_s=timeout_s) as connection:
        connection.read_only = True
        rows = connection.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema <> ALL(%s) ORDER BY table_schema, table_name, ordinal_position",
            [list(POSTGRES_SYSTEM_SCHEMAS)],
        ).fetchall()
        tables: dict[tuple[str, str], list[Column]] = {}
        for schema, table, column, data_type in rows:
            tables.setdefault((schema, table), []).append(Column(name=column, type=data_type))
        infos = []
        for (schema, table), columns in tables.items():
            samples: list[list[Any]] = []
            if sample_rows:
                query = pgsql.SQL("SELECT * FROM {} LIMIT %s").format(pgsql.Identifier(schema, table))
                try:
                    with connection.transaction():
                        fetched = connection.execute(query, [sample_rows]).fetchall()
                    samples = [[json_cell(cell) for cell in row] for row in fetched]
                except psycopg.Error:
                    samples = []  # no SELECT privilege on this one: it is listed without rows
            infos.append(TableInfo(name=f"{schema}.{table}".lower(), columns=columns, sample_rows=samples))
        return infos


def postgres_run(target: PostgresTarget, statement: str, *, timeout_s: float, row_cap: int) -> QueryResult:
    with _postgres_connect(target, timeout_s=timeout_s) as connection:
        connection.read_only = True
        try:
            with connection.transaction(), connection.cursor(name="chatplatform_query") as cursor:
                # A server-side cursor: rows come in batches, never more than the cap plus one.
                cursor.execute(statement)
                fetched = cursor.fetchmany(row_cap + 1)
                columns = [column.name for column in cursor.description or []]
        except psycopg.errors.QueryCanceled as exc:
            raise QueryFailed(timeout_message(timeout_s)) from exc
        except psycopg.Error as exc:
            raise QueryFailed(f"the database refused the query: {str(exc).strip().splitlines()[0]}") from exc
    return _result(columns, fetched, row_cap)


# --- MySQL and MariaDB ---------------------------------------------------------------------------

MYSQL_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


@dataclass(frozen=True)
class MysqlTarget:
    """A `mysql://user:password@host:3306/database` DSN that passed the checks, and the approved address."""

    host: str
    address: str
    port: int
    user: str
    password: str
    database: str


def mysql_target(dsn: str) -> MysqlTarget:
    """Check a user's MySQL DSN: the URL form only, no query options (they could make the client
    read local files), one TCP host that the SSRF guard allows."""
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port or 3306
    except ValueError as exc:
        raise DataSourceUnreachable(f"the DSN could not be read ({exc}): write mysql://user:pass@host:3306/db") from exc
    if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
        raise DataSourceUnreachable("write the DSN as mysql://user:pass@host:3306/database")
    if parts.query and parse_qs(parts.query):
        raise UnsafeUrl("a MySQL DSN takes no options (?...): only user, password, host, port and database")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise DataSourceUnreachable("the DSN names no database: add /database")
    addresses = outbound_host_check(parts.hostname, port)
    return MysqlTarget(
        host=parts.hostname,
        address=str(addresses[0]),
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=database,
    )


def _mysql_connect(target: MysqlTarget, *, timeout_s: float) -> pymysql.connections.Connection[Any]:
    try:
        connection = pymysql.connect(
            host=target.address,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=int(timeout_s) + 5,  # a backstop: the server's own limit comes first
            local_infile=False,
            charset="utf8mb4",
            autocommit=True,
        )
    except pymysql.Error as exc:
        raise DataSourceUnreachable(
            f"could not connect to {target.host}: {exc.args[-1] if exc.args else exc}; check the DSN and that the "
            "server accepts us"
        ) from exc
    with connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        version = str(cursor.fetchone()[0])
        # MariaDB limits any statement in seconds; MySQL limits SELECTs in milliseconds.
        if "mariadb" in version.lower():
            cursor.execute("SET SESSION max_statement_time = %s", [timeout_s])
        else:
            cursor.execute("SET SESSION MAX_EXECUTION_TIME = %s", [int(timeout_s * 1000)])
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
    return connection


def mysql_introspect(target: MysqlTarget, *, sample_rows: int, timeout_s: float) -> list[TableInfo]:
    connection = _mysql_connect(target, timeout_s=timeout_s)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT table_name, column_name, column_type FROM information_schema.columns "
                "WHERE table_schema = DATABASE() ORDER BY table_name, ordinal_position"
            )
            tables: dict[str, list[Column]] = {}
            for table, column, column_type in cursor.fetchall():
                tables.setdefault(str(table), []).append(Column(name=str(column), type=str(column_type)))
            infos = []
            for table, columns in tables.items():
                samples: list[list[Any]] = []
                if sample_rows:
                    quoted = "`" + table.replace("`", "``") + "`"
                    try:
                        # `quoted` is a name the server listed, quoted as an identifier.
                        cursor.execute(f"SELECT * FROM {quoted} LIMIT %s", [sample_rows])  # noqa: S608
                        samples = [[json_cell(cell) for cell in row] for row in cursor.fetchall()]
                    except pymysql.Error:
                        samples = []
                infos.append(TableInfo(name=table.lower(), columns=columns, sample_rows=samples))
            return infos
    finally:
        connection.close()


def mysql_run(target: MysqlTarget, statement: str, *, timeout_s: float, row_cap: int) -> QueryResult:
    connection = _mysql_connect(target, timeout_s=timeout_s)
    cursor = connection.cursor(pymysql.cursors.SSCursor)
    try:
        # Unbuffered: rows stream from the server, never more than the cap plus one are read. The
        # cursor is not closed (that would read the rest): closing the connection drops it.
        cursor.execute("START TRANSACTION READ ONLY")
        cursor.execute(statement)
        fetched = cursor.fetchmany(row_cap + 1)
        columns = [column[0] for column in cursor.description or []]
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else 0
        if code in (1969, 3024, 2013):  # MariaDB's and MySQL's time limit, the read backstop
            raise QueryFailed(timeout_message(timeout_s)) from exc
        raise QueryFailed(f"the database refused the query: {exc.args[-1] if exc.args else exc}") from exc
    except pymysql.Error as exc:
        raise QueryFailed(f"the database refused the query: {exc.args[-1] if exc.args else exc}") from exc
    finally:
        # pymysql reads the rest of an unbuffered result when the result is collected; there is
        # nothing to read once the connection is closed, so it is told so (a private flag).
        result = getattr(cursor, "_result", None)
        if result is not None:
            result.unbuffered_active = False
        connection.close()
    return _result(columns, fetched, row_cap)


# --- SQLite ----------------------------------------------------------------------------------


def sqlite_check_file(path: Path) -> None:
    """An uploaded file is a readable SQLite database, or NotASqliteFile."""
    with path.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise NotASqliteFile("the file is not a SQLite database (its header is wrong): upload a .sqlite/.db file")
    try:
        with _sqlite_connect(path) as connection:
            result = connection.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise NotASqliteFile(f"the SQLite file cannot be read ({exc}): upload an intact copy") from exc
    if not result or result[0] != "ok":
        problem = result[0] if result else "no answer"
        raise NotASqliteFile(f"the SQLite file is damaged ({problem}): upload an intact copy")


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise DataSourceUnreachable(
            "the data source's SQLite file is missing from the server's storage: upload it again as a new data source"
        )
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    connection.execute("PRAGMA query_only = ON")
    # The file is the user's: its schema must not be able to call functions with side effects.
    connection.execute("PRAGMA trusted_schema = OFF")
    return connection


def sqlite_introspect(path: Path, *, sample_rows: int) -> list[TableInfo]:
    with _sqlite_connect(path) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        infos = []
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            columns = [
                Column(name=row[1], type=row[2] or "") for row in connection.execute(f"PRAGMA table_info({quoted})")
            ]
            samples: list[list[Any]] = []
            if sample_rows:
                # `quoted` is a name read from the file's own schema, quoted as an identifier.
                fetched = connection.execute(f"SELECT * FROM {quoted} LIMIT ?", [sample_rows]).fetchall()  # noqa: S608
                samples = [[json_cell(cell) for cell in row] for row in fetched]
            infos.append(TableInfo(name=name.lower(), columns=columns, sample_rows=samples))
        return infos


Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


def _sqlite_authorizer(allowed_tables: set[str]) -> Authorizer:
    """Read the allowed tables, call functions other than the dangerous few, nothing else."""
    refused_functions = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}

    def authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            return sqlite3.SQLITE_OK if (arg1 or "").lower() in allowed_tables else sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_DENY if (arg2 or "").lower() in refused_functions else sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_RECURSIVE:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return authorize


def sqlite_run(
    path: Path, statement: str, *, allowed_tables: Collection[str], timeout_s: float, row_cap: int
) -> QueryResult:
    deadline = time.monotonic() + timeout_s
    with _sqlite_connect(path) as connection:
        connection.set_authorizer(_sqlite_authorizer({name.lower() for name in allowed_tables}))
        # Called every 10,000 virtual-machine steps; a non-zero answer interrupts the query.
        connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = connection.execute(statement)
            fetched = cursor.fetchmany(row_cap + 1)
            columns = [column[0] for column in cursor.description or []]
        except sqlite3.OperationalError as exc:
            if time.monotonic() > deadline:
                raise QueryFailed(timeout_message(timeout_s)) from exc
            raise QueryFailed(f"the database refused the query: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise QueryFailed(f"the database refused the query: {exc}") from exc
    return _result(columns, fetched, row_cap)


def _result(columns: list[str], fetched: list[Any], row_cap: int) -> QueryResult:
    rows = [[json_cell(cell) for cell in row] for row in fetched[:row_cap]]
    return QueryResult(columns=columns, rows=rows, row_count=len(rows), truncated=len(fetched) > row_cap)
