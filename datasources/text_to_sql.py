"""Questions answered in SQL: the assistant's model writes one statement from the allowed tables'
schema, the guard checks it and the executor runs it (datasources.services.data_source_query);
what the guard or the database refuses goes back to the model, DATA_SOURCE_SQL_RETRIES times at
most. A follow-up ("and only for 2024?") sees the previous question and statement.

Prompted, not tool-called: the offline model (SmolLM2) and many served ones have no function
calling, and one statement per question needs no agent loop. The result is saved with the answer
as a tool call (Message.tool_calls) and shown in the chat as the SQL and a table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from core.domain_errors import DomainError
from datasources.connectors import DataSourceUnreachable, QueryFailed, QueryResult
from datasources.models import DataSource
from datasources.services import data_source_query
from datasources.sql_guard import SqlRefused

SQL_MAX_TOKENS = 300
WORD = re.compile(r"\w+", re.UNICODE)
FENCED_SQL = re.compile(r"```(?:sql|SQL)?\s*(.*?)```", re.DOTALL)
BARE_SQL = re.compile(r"\b(SELECT|WITH)\b.*", re.DOTALL | re.IGNORECASE)

SQL_WRITER = (
    "You write one {dialect} SELECT statement that answers the user's question from this database. "
    "Use only these tables and columns. Answer with the SQL only, in a ```sql block.\n\n"
    "{description}Tables:\n{schema}"
)
SQL_FIX = "The database answered: {error}\nWrite the corrected statement, in a ```sql block."
ANSWER_WITH_SQL = (
    "The question was answered by running this SQL on the data source {name}:\n```sql\n{sql}\n```\n"
    "Result ({row_count} rows{truncated}):\n{table}\n"
    "Answer from this result. Give the numbers as they are; do not invent rows."
)
SQL_FAILED = (
    "A query on the data source {name} could not answer the question: {error}. Tell the user that the "
    "data could not be read, and what they could ask instead."
)


@dataclass(frozen=True)
class SqlToolCall:
    """One statement run for a question: what the chat shows and the message keeps."""

    data_source: DataSource
    sql: str
    result: QueryResult | None
    error: str
    attempts: int

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "tool": "sql",
            "data_source_id": self.data_source.pk,
            "data_source_name": self.data_source.name,
            "sql": self.sql,
            "columns": result.columns if result else [],
            "rows": result.rows if result else [],
            "row_count": result.row_count if result else 0,
            "truncated": result.truncated if result else False,
            "error": self.error,
            "attempts": self.attempts,
        }

    def prompt_text(self) -> str:
        if self.result is None:
            return SQL_FAILED.format(name=self.data_source.name, error=self.error)
        return ANSWER_WITH_SQL.format(
            name=self.data_source.name,
            sql=self.sql,
            row_count=self.result.row_count,
            truncated=", more not shown" if self.result.truncated else "",
            table=markdown_table(self.result.columns, self.result.rows),
        )


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(column) for column in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def schema_text(source: DataSource) -> str:
    """The allowed tables as the model reads them: columns with types, then sample rows."""
    allowed = set(source.allowed_tables)
    blocks = []
    for table in source.tables:
        if table["name"] not in allowed:
            continue
        columns = ", ".join(f"{column['name']} {column['type']}".strip() for column in table["columns"])
        block = f"{table['name']}({columns})"
        if table.get("sample_rows"):
            block += "\n  e.g. " + "; ".join(str(tuple(row)) for row in table["sample_rows"][:3])
        blocks.append(block)
    return "\n".join(blocks)


def statement_in(reply: str) -> str:
    """The SQL in a model's reply: a fenced block, else from the first SELECT/WITH on."""
    fenced = FENCED_SQL.search(reply)
    if fenced:
        return fenced.group(1).strip()
    bare = BARE_SQL.search(reply)
    return bare.group(0).strip() if bare else reply.strip()


def source_for(question: str, sources: list[DataSource]) -> DataSource:
    """The data source whose table and column names share most words with the question (the first
    on a tie): one statement runs on one database."""

    def overlap(source: DataSource) -> int:
        words = {word.lower() for word in WORD.findall(question)}
        names = {
            part
            for table in source.tables
            if table["name"] in source.allowed_tables
            for name in [table["name"], *(column["name"] for column in table["columns"])]
            for part in re.split(r"[._]", name.lower())
        }
        return len(words & names)

    return max(sources, key=overlap)


def sql_tool_call(
    *,
    write: Callable[[list[BaseMessage], int], str],
    sources: list[DataSource],
    question: str,
    previous: tuple[str, str] | None,
) -> SqlToolCall:
    """Write, check and run one statement for `question`. `write(prompt, max_tokens)` asks the
    assistant's model (metered by the caller); `previous` is the conversation's last (question, SQL),
    for follow-ups."""
    source = source_for(question, sources)
    description = f"{source.description.strip()}\n\n" if source.description.strip() else ""
    system = SQL_WRITER.format(dialect=source.dialect, description=description, schema=schema_text(source))
    prompt: list[BaseMessage] = [SystemMessage(system)]
    if previous is not None:
        prompt += [HumanMessage(previous[0]), AIMessage(f"```sql\n{previous[1]}\n```")]
    prompt.append(HumanMessage(question))
    sql, error = "", ""
    attempts = 0
    for attempts in range(1, settings.DATA_SOURCE_SQL_RETRIES + 2):
        reply = write(prompt, SQL_MAX_TOKENS)
        sql = statement_in(reply)
        try:
            result = data_source_query(data_source=source, sql=sql, row_cap=settings.DATA_SOURCE_ANSWER_ROWS)
        except (SqlRefused, QueryFailed) as exc:
            error = str(exc)
            prompt += [AIMessage(reply), HumanMessage(SQL_FIX.format(error=error))]
            continue
        except (DataSourceUnreachable, DomainError) as exc:
            return SqlToolCall(data_source=source, sql=sql, result=None, error=str(exc), attempts=attempts)
        return SqlToolCall(data_source=source, sql=sql, result=result, error="", attempts=attempts)
    return SqlToolCall(data_source=source, sql=sql, result=None, error=error, attempts=attempts)
