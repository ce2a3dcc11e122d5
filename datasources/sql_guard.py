"""The check every statement passes before it runs against a team's database, whoever wrote it (a
member in the SQL console, an assistant's model): parsed by a real SQL parser (sqlglot) in the
source's dialect and refused unless it is ONE read-only query over tables the admin allowed.

This is the first of three walls; the executor adds a read-only transaction (and read-only
connection settings), a statement timeout and a row cap (datasources.connectors), so a statement
the parser misjudges still cannot write or run forever.

Refused: anything but a SELECT (or UNION/INTERSECT/EXCEPT of them); several statements; any
write, DDL, COPY, ATTACH, PRAGMA, SET, transaction control, SELECT INTO or FOR UPDATE anywhere in
the tree (a CTE that deletes included); tables outside the allowed list (system catalogues
included); and functions the parser does not know unless they are on a short list of harmless
ones: `pg_read_file`, `lo_import`, `dblink`, `set_config`, `nextval`, `query_to_xml`,
`load_extension` and every other function with side effects or file access is unknown to it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from core.domain_errors import DomainError

MAX_SQL_CHARS = 20_000

# Nodes that write, change the schema or the session, or read outside the database.
REFUSED_NODES: tuple[type, ...] = (
    exp.DML,
    exp.DDL,
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Command,
    exp.Copy,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Set,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Grant,
    exp.Revoke,
    exp.Use,
    exp.LoadData,
    exp.Lock,
    exp.Into,
    exp.Analyze,
    exp.Describe,
    exp.Cache,
    exp.Uncache,
    exp.Refresh,
    exp.Kill,
    exp.Declare,
    exp.Execute,
    exp.SessionParameter,  # MySQL's @@variables: the server's settings are not the data
)
# Functions the parser knows that read files or other databases.
REFUSED_FUNCTIONS: tuple[type[exp.Expression], ...] = (exp.ReadCSV, exp.ReadParquet)
# Functions the parser does not model (they arrive as exp.Anonymous) that only compute on their
# arguments. Everything else unknown is refused: that is where side effects hide.
HARMLESS_FUNCTIONS = frozenset(
    {
        # PostgreSQL
        "to_char", "to_date", "to_timestamp", "to_number", "date_part", "age", "justify_days",
        "make_date", "make_interval", "date_bin", "initcap", "split_part", "strpos", "lpad", "rpad",
        "btrim", "ltrim", "rtrim", "regexp_replace", "string_agg", "array_agg", "percentile_cont",
        "percentile_disc", "mode", "width_bucket", "ntile", "cume_dist", "percent_rank", "dense_rank",
        "rank", "row_number", "lag", "lead", "first_value", "last_value", "nth_value", "greatest",
        "least", "nullif", "round", "trunc", "ceil", "ceiling", "floor", "abs", "sign", "power", "sqrt",
        "ln", "log", "exp", "mod", "md5", "concat_ws", "char_length", "octet_length", "bool_and",
        "bool_or", "every", "extract", "date_trunc", "now", "current_date",
        # SQLite
        "strftime", "julianday", "date", "time", "datetime", "unixepoch", "printf", "format", "ifnull",
        "iif", "instr", "substr", "substring", "total", "group_concat", "hex", "typeof", "char",
        "unicode", "length", "lower", "upper", "trim", "replace", "coalesce", "min", "max", "avg", "sum",
        "count",
    }
)  # fmt: skip


class SqlRefused(DomainError):
    """The statement is not one read-only query over the allowed tables; the message says why."""

    status_code = 400
    code = "sql_refused"


@dataclass(frozen=True)
class CheckedStatement:
    sql: str  # as written, without a trailing semicolon
    tables: tuple[str, ...]  # the allowed tables it reads, as named in the allowed list


def qualified_name(table: exp.Table, default_schema: str) -> str:
    """`schema.table` where the source has schemas (PostgreSQL), else `table` (SQLite)."""
    if table.catalog:
        raise SqlRefused(f"{table.sql()} names another database: query the tables of this data source only")
    schema = table.db or default_schema
    return f"{schema}.{table.name}".lower() if schema else table.name.lower()


def _check_functions(statement: exp.Expression) -> None:
    for function in statement.find_all(exp.Func):
        if isinstance(function, REFUSED_FUNCTIONS):
            raise SqlRefused(f"{function.sql()[:80]} reads outside the database, which a query may not do")
        if isinstance(function, exp.Anonymous) and function.name.lower() not in HARMLESS_FUNCTIONS:
            raise SqlRefused(
                f"the function {function.name}() is not allowed (it may write, read files or change the session): "
                "use standard SQL functions"
            )


def _check_tables(statement: exp.Expression, allowed: set[str], default_schema: str) -> tuple[str, ...]:
    cte_names = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    read: list[str] = []
    for table in statement.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # a table function such as generate_series(): its function was checked
        if not table.db and table.name.lower() in cte_names:
            continue
        name = qualified_name(table, default_schema)
        if name not in allowed:
            raise SqlRefused(
                f"the table {name} is not one this data source allows; allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        if name not in read:
            read.append(name)
    return tuple(read)


def sql_check(sql: str, *, dialect: str, allowed_tables: Collection[str], default_schema: str = "") -> CheckedStatement:
    """`sql` if it is one read-only query over `allowed_tables` (lower-case `schema.table` names for
    PostgreSQL, `table` for SQLite), else SqlRefused with the reason."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise SqlRefused("the statement is empty: write one SELECT")
    if len(text) > MAX_SQL_CHARS:
        raise SqlRefused(f"the statement is longer than {MAX_SQL_CHARS} characters: shorten it")
    try:
        statements = [parsed for parsed in sqlglot.parse(text, read=dialect) if parsed is not None]
    except (ParseError, TokenError) as exc:
        raise SqlRefused(f"the statement could not be parsed as {dialect} SQL: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise SqlRefused(f"{len(statements)} statements were sent: send exactly one SELECT")
    statement = statements[0]
    if not isinstance(statement, exp.Select | exp.SetOperation):
        raise SqlRefused(f"only SELECT queries may run, not {statement.key.upper()}")
    for node in statement.walk():
        if isinstance(node, REFUSED_NODES):
            raise SqlRefused(f"{node.key.upper()} is not allowed in a read-only query")
    _check_functions(statement)
    tables = _check_tables(statement, {name.lower() for name in allowed_tables}, default_schema)
    return CheckedStatement(sql=text, tables=tables)
