"""The text-to-SQL section of `make bench`: how well an assistant's model answers questions about a
team's database through the platform's own path, scored by execution accuracy.

- The database: a small retailer's sales data in SQLite (regions, employees, customers, products,
  orders, order_items), built here from a fixed seed, so every run and machine has the same rows.
- The questions: bench/questions/sql/sales.jsonl, English and Chinese, each with a gold
  statement; a follow-up also carries the earlier question and its gold statement, which the
  platform shows the model as the conversation's previous SQL. The expected result is the gold
  statement's result, read with plain sqlite3 (not through the platform).
- The path: the file registered as a team's data source (datasources.services.data_source_create),
  then datasources.text_to_sql.sql_tool_call with a `write` that calls the model through
  chat.services.invoke_metered, exactly as an assistant's turn does (chat.services._sql_call): the
  same prompt, SQL_MAX_TOKENS, guard, read-only executor, row cap and DATA_SOURCE_SQL_RETRIES.
- The score: a question is answered when the result of the statement the platform settled on
  equals the expected one as a multiset of rows (a list, for the questions that ask for an order),
  column names ignored and columns matched in any order, numbers equal within a relative 1e-3
  (rounding to cents passes). The lenient figure also accepts extra columns (a product's name with
  its units sold, where the question asked for the name): the person asking still has the answer.
- The gold row: every gold statement through the same guard and executor, which checks that the
  guard does not refuse legitimate analytics SQL and that the executor returns what sqlite3 does.

`python bench/sql_bench.py --check` builds the database and checks the question file (fields,
gold statements run and pass the guard, results within the row cap, no duplicate questions)
without Django or a model. bench/run.py runs the section (BENCH_SQL_ONLY=1 alone; models from
BENCH_SQL_MODELS)."""

from __future__ import annotations

import html
import json
import math
import random
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import permutations
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accounts.models import Team, User
    from datasources.models import DataSource
    from models_registry.models import ModelRegistration

BASE_DIR = Path(__file__).resolve().parent.parent
QUESTIONS = BASE_DIR / "bench" / "questions" / "sql" / "sales.jsonl"
SEED = 20261202
SOURCE_NAME = "bench-sales"
SOURCE_DESCRIPTION = (
    "Sales of an office-electronics retailer in China, 2023-2024: orders (with their line items), the "
    "customers who placed them, the products sold, the sales staff and their regions. An order's value is "
    "the sum of quantity * unit_price over its items."
)
LANGUAGE_LABELS = {"en": "English", "zh": "Chinese"}
REL_TOLERANCE = 1e-3
ABS_TOLERANCE = 1e-6

Row = tuple[Any, ...]
Log = Callable[[str], None]


# --- The database ------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE regions (
    region_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE employees (
    employee_id INTEGER PRIMARY KEY,
    full_name TEXT NOT NULL,
    title TEXT NOT NULL,
    region_id INTEGER NOT NULL REFERENCES regions(region_id),
    manager_id INTEGER REFERENCES employees(employee_id),
    hire_date TEXT NOT NULL
);
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    segment TEXT NOT NULL,
    city TEXT NOT NULL,
    region_id INTEGER NOT NULL REFERENCES regions(region_id),
    joined_on TEXT NOT NULL
);
CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    list_price REAL NOT NULL,
    discontinued INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
    employee_id INTEGER NOT NULL REFERENCES employees(employee_id),
    order_date TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE order_items (
    order_item_id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL REFERENCES orders(order_id),
    product_id INTEGER NOT NULL REFERENCES products(product_id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL
);
"""

REGIONS = ("North", "East", "South", "West")
CITIES = {  # city: (region, weight)
    "Beijing": ("North", 5),
    "Tianjin": ("North", 2),
    "Shanghai": ("East", 6),
    "Hangzhou": ("East", 3),
    "Nanjing": ("East", 2),
    "Guangzhou": ("South", 4),
    "Shenzhen": ("South", 4),
    "Chengdu": ("West", 3),
    "Chongqing": ("West", 2),
}
SURNAMES = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun", "Ma", "Zhu")
GIVEN_NAMES = (
    "Wei", "Fang", "Na", "Min", "Jing", "Lei", "Qiang", "Yan", "Jie", "Tao", "Hui", "Ying", "Hao", "Xin", "Lin", "Bo",
)  # fmt: skip
COMPANY_WORDS = (
    ("Bright", "Harbor", "Golden", "Summit", "Silver", "Jade", "Blue", "Evergreen", "Red", "Pacific", "Great Wall"),
    ("Trading", "Logistics", "Design", "Software", "Foods", "Media", "Consulting", "Textiles", "Machinery", "Clinic"),
)
# name, category, list price, discontinued, sold: the unsold ones are what "never ordered" finds.
PRODUCTS = (
    ("ThinkBook 14 Laptop", "Laptops", 4999.0, 0, True),
    ("ThinkBook 16 Laptop", "Laptops", 5899.0, 0, True),
    ("AirLite 13 Laptop", "Laptops", 6499.0, 0, True),
    ("ProStation 15 Laptop", "Laptops", 8999.0, 0, True),
    ("Classic 15 Laptop", "Laptops", 3999.0, 1, True),
    ("UltraView 24 Monitor", "Monitors", 899.0, 0, True),
    ("UltraView 27 Monitor", "Monitors", 1399.0, 0, True),
    ("UltraView 32 4K Monitor", "Monitors", 2699.0, 0, True),
    ("CurveMax 34 Monitor", "Monitors", 3299.0, 0, False),
    ("Wireless Mouse M2", "Accessories", 79.0, 0, True),
    ("Ergo Mouse M5", "Accessories", 199.0, 0, True),
    ("Mechanical Keyboard K8", "Accessories", 399.0, 0, True),
    ("USB-C Dock D6", "Accessories", 699.0, 0, True),
    ("Laptop Backpack", "Accessories", 159.0, 0, True),
    ("HD Webcam C3", "Accessories", 249.0, 0, True),
    ("Noise-Cancelling Headset H7", "Accessories", 899.0, 0, True),
    ("LaserJet Mono P1", "Printers", 1299.0, 0, True),
    ("ColorJet Pro P5", "Printers", 2999.0, 0, True),
    ("InkTank Home P2", "Printers", 999.0, 1, True),
    ("Photo Printer P9", "Printers", 1899.0, 1, False),
    ("Ergonomic Office Chair", "Furniture", 1599.0, 0, True),
    ("Standing Desk S1", "Furniture", 2499.0, 0, True),
    ("Monitor Arm A2", "Furniture", 459.0, 0, True),
    ("Filing Cabinet F3", "Furniture", 899.0, 0, True),
)
CUSTOMERS = {"Consumer": 25, "Small Business": 20, "Corporate": 15}
ORDERS = 250
FIRST_DAY, LAST_DAY = date(2023, 1, 1), date(2024, 12, 31)
OPEN_FROM = date(2024, 12, 10)  # orders from here on are still pending or shipped


def _day(rng: random.Random, start: date, end: date) -> date:
    return start + timedelta(days=rng.randint(0, (end - start).days))


def _unique_names(rng: random.Random, count: int, make: Callable[[], str], taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = make()
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def build_database(path: Path) -> None:
    """The sample database at `path` (replaced if it exists), the same rows on every run."""
    rng = random.Random(SEED)  # noqa: S311 (sample data, not a secret)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    taken: set[str] = set()

    def person() -> str:
        return f"{rng.choice(SURNAMES)} {rng.choice(GIVEN_NAMES)}"

    region_ids = {name: number for number, name in enumerate(REGIONS, start=1)}
    employees: list[tuple[int, str, str, int, int | None, str]] = []
    reps: dict[int, list[int]] = {}
    for region_id in region_ids.values():
        manager_id = len(employees) + 1
        manager = _unique_names(rng, 1, person, taken)[0]
        hired = _day(rng, date(2015, 1, 1), date(2019, 12, 31)).isoformat()
        employees.append((manager_id, manager, "Regional Manager", region_id, None, hired))
        for name in _unique_names(rng, 3, person, taken):
            employee_id = len(employees) + 1
            hired = _day(rng, date(2018, 1, 1), date(2023, 6, 30)).isoformat()
            employees.append((employee_id, name, "Sales Rep", region_id, manager_id, hired))
            reps.setdefault(region_id, []).append(employee_id)

    def company() -> str:
        return f"{rng.choice(COMPANY_WORDS[0])} {rng.choice(COMPANY_WORDS[1])}"

    cities = list(CITIES)
    weights = [CITIES[city][1] for city in cities]
    customers: list[tuple[int, str, str, str, int, str]] = []
    for segment, count in CUSTOMERS.items():
        names = _unique_names(rng, count, person if segment == "Consumer" else company, taken)
        for name in names:
            city = rng.choices(cities, weights)[0]
            joined = _day(rng, date(2021, 1, 1), date(2024, 9, 30)).isoformat()
            customers.append((len(customers) + 1, name, segment, city, region_ids[CITIES[city][0]], joined))
    # A few customers never order; the others with weights from a long tail (a few big buyers).
    buyers = rng.sample(customers, len(customers) - 4)
    segment_weight = {"Consumer": 1.0, "Small Business": 2.0, "Corporate": 3.0}
    buyer_weights = [segment_weight[buyer[2]] * min(rng.paretovariate(2.0), 5.0) for buyer in buyers]

    sold = [number for number, product in enumerate(PRODUCTS, start=1) if product[4]]
    orders: list[tuple[int, int, int, str, str]] = []
    items: list[tuple[int, int, int, int, float]] = []
    for order_id in range(1, ORDERS + 1):
        ordered = _day(rng, FIRST_DAY, LAST_DAY)
        # Only customers who had joined by then.
        eligible = [index for index, buyer in enumerate(buyers) if buyer[5] <= ordered.isoformat()]
        customer = buyers[rng.choices(eligible, [buyer_weights[index] for index in eligible])[0]]
        if ordered >= OPEN_FROM:
            status = rng.choice(("pending", "shipped"))
        else:
            status = rng.choices(("delivered", "cancelled", "returned"), (85, 8, 7))[0]
        employee_id = rng.choice(reps[customer[4]])  # reps serve their own region's customers
        orders.append((order_id, customer[0], employee_id, ordered.isoformat(), status))
        for product_id in rng.sample(sold, rng.choice((1, 1, 2, 2, 3, 4))):
            _name, category, price, _discontinued, _sold = PRODUCTS[product_id - 1]
            quantity = rng.randint(1, 10) if category == "Accessories" else rng.randint(1, 4)
            items.append((len(items) + 1, order_id, product_id, quantity, price))

    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA)
        connection.executemany("INSERT INTO regions VALUES (?, ?)", [(i, n) for n, i in region_ids.items()])
        connection.executemany("INSERT INTO employees VALUES (?, ?, ?, ?, ?, ?)", employees)
        connection.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)", customers)
        connection.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?, ?)",
            [(number, *product[:4]) for number, product in enumerate(PRODUCTS, start=1)],
        )
        connection.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", orders)
        connection.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?)", items)
    connection.close()


def read_rows(path: Path, sql: str) -> tuple[list[str], list[Row]]:
    """A statement's columns and every row, read with plain sqlite3 on a read-only connection."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = connection.execute(sql)
        return [column[0] for column in cursor.description or []], [tuple(row) for row in cursor.fetchall()]
    finally:
        connection.close()


# --- The questions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlItem:
    """One question of bench/questions/sql/sales.jsonl. A follow-up's `previous` is the earlier
    question and its gold statement, as the conversation would hold them."""

    id: str
    lang: str
    question: str
    sql: str
    ordered: bool  # the question asks for an order: rows compared as a list
    tags: tuple[str, ...]
    previous: tuple[str, str] | None = None

    @property
    def statements(self) -> list[str]:
        """Every gold statement the item holds (the previous one first)."""
        return [self.previous[1], self.sql] if self.previous else [self.sql]


def load_items(path: Path = QUESTIONS) -> list[SqlItem]:
    """The question file's items, or ValueError naming the first bad line."""
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
            previous = row.get("previous")
            item = SqlItem(
                id=row["id"],
                lang=row["lang"],
                question=row["question"].strip(),
                sql=row["sql"].strip(),
                ordered=row["ordered"],
                tags=tuple(row["tags"]),
                previous=(previous["question"].strip(), previous["sql"].strip()) if previous else None,
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: not an item ({type(exc).__name__}: {exc})") from exc
        if item.lang not in LANGUAGE_LABELS or not item.question or not item.sql or not isinstance(item.ordered, bool):
            raise ValueError(f"{where}: lang must be one of {', '.join(LANGUAGE_LABELS)}; question and sql non-empty")
        items.append(item)
    return items


# --- Scoring -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A cell as a number, if it is one (a number written as text included: printf('%.2f'))."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def same_cell(expected: Any, got: Any) -> bool:
    expected_number, got_number = _number(expected), _number(got)
    if expected_number is not None and got_number is not None:
        return math.isclose(expected_number, got_number, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE)
    if expected is None or got is None:
        return expected is None and got is None
    return str(expected) == str(got)


def _same_row(expected: Row, got: Row) -> bool:
    return all(same_cell(a, b) for a, b in zip(expected, got, strict=True))


def _same_rows(expected: Sequence[Row], got: Sequence[Row], *, ordered: bool) -> bool:
    if len(expected) != len(got):
        return False
    if ordered:
        return all(_same_row(left, right) for left, right in zip(expected, got, strict=True))
    unused = list(got)
    for row in expected:  # a multiset match; greedy is enough for rows this distinct
        match = next((index for index, other in enumerate(unused) if _same_row(row, other)), None)
        if match is None:
            return False
        unused.pop(match)
    return True


def results_match(expected: Sequence[Row], got: Sequence[Row], *, ordered: bool, extra_columns: bool) -> bool:
    """`got` answers like `expected`: the same rows (in the same order where `ordered`), with its
    columns in any order; with `extra_columns`, columns beyond the expected ones are ignored."""
    if not expected or not got:
        return len(expected) == len(got)
    width, got_width = len(expected[0]), len(got[0])
    if got_width < width or (got_width > width and not extra_columns) or got_width > 8:
        return False
    for columns in permutations(range(got_width), width):
        projected = [tuple(row[index] for index in columns) for row in got]
        if _same_rows(expected, projected, ordered=ordered):
            return True
    return False


# --- The models --------------------------------------------------------------------------------

OFFLINE_MODEL = "smollm2"
OFFLINE_LABEL = "SmolLM2-135M (Xinference, llama.cpp, CPU)"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of BENCH_SQL_MODELS: `smollm2`, the offline model on the bench's own Xinference,
    or `<model>@<base URL>`, a model an OpenAI-compatible server serves (vLLM, Ollama, llama.cpp,
    LMDeploy, another Xinference: base URL without /v1), e.g.
    `Qwen/Qwen2.5-Coder-7B-Instruct@http://gpu-host:8000`."""

    model: str
    endpoint: str = ""  # empty: the offline model

    @property
    def label(self) -> str:
        return OFFLINE_LABEL if not self.endpoint else f"{self.model} ({self.endpoint})"


def model_specs(value: str) -> list[ModelSpec]:
    specs = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        if entry.lower() == OFFLINE_MODEL:
            specs.append(ModelSpec(OFFLINE_MODEL))
            continue
        model, separator, endpoint = entry.partition("@")
        if not separator or not model or not endpoint.startswith(("http://", "https://")):
            raise SystemExit(f"BENCH_SQL_MODELS: {entry!r} is neither {OFFLINE_MODEL} nor <model>@<http(s) base URL>")
        specs.append(ModelSpec(model, endpoint.rstrip("/").removesuffix("/v1")))
    if not specs:
        raise SystemExit("BENCH_SQL_MODELS names no model")
    return specs


def served_model(*, team: Team, spec: ModelSpec, name: str, api_key: str) -> ModelRegistration:
    """A served model registered on the team as any OpenAI-compatible model is (a provider of its own)."""
    from models_registry.services import provider_create, registration_create

    provider = provider_create(team=team, name=name, kind="openai_compatible", endpoint=spec.endpoint, api_key=api_key)
    return registration_create(provider=provider, kind="llm", name=spec.model, provider_model_uid=spec.model)


# --- The runs ----------------------------------------------------------------------------------

GUARD_REASONS = (  # a fragment of sql_guard's message -> what the report calls it
    ("could not be parsed", "not parseable as SQL"),
    ("statement is empty", "no statement in the reply"),
    ("statements were sent", "several statements"),
    ("only SELECT queries", "not a SELECT"),
    ("is not one this data source allows", "a table that is not in the database"),
    ("the function", "a function that is not allowed"),
    ("is not allowed in a read-only query", "a write or session command"),
    ("names another database", "another database"),
    ("reads outside the database", "file access"),
    ("characters: shorten it", "too long"),
)
DATABASE_REASONS = (
    ("syntax error", "syntax error"),
    ("no such column", "no such column"),
    ("no such function", "no such function"),
    ("ambiguous column", "ambiguous column"),
    ("misuse of", "misused aggregate or window"),
    ("not authorized", "not authorised"),
    ("ran past the", "time limit"),
)


def reason_kind(message: str, kinds: tuple[tuple[str, str], ...]) -> str:
    return next((label for fragment, label in kinds if fragment in message), message[:60])


@dataclass
class Statement:
    """One statement the model wrote for a question, and what the platform did with it."""

    sql: str
    outcome: str  # "ran", "guard" (refused by sql_guard), "database" (refused when run)
    reason: str = ""


@dataclass
class Answered:
    """One question asked of one model."""

    item: SqlItem
    statements: list[Statement]
    seconds: float
    correct: bool = False
    correct_lenient: bool = False
    model_error: str = ""  # the model call failed (the platform's turn would fail)

    @property
    def answered(self) -> bool:
        return bool(self.statements) and self.statements[-1].outcome == "ran"


@dataclass
class GoldCheck:
    """The gold statements through the platform's guard and executor."""

    statements: int = 0
    guard_refused: list[tuple[str, str, str]] = field(default_factory=list)  # id, sql, reason
    database_refused: list[tuple[str, str, str]] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # ids whose platform result is not sqlite3's
    truncated: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class ModelRun:
    label: str
    answers: list[Answered]


def gold_through_guard(source: DataSource, items: list[SqlItem], expected: dict[str, list[Row]]) -> GoldCheck:
    """Every gold statement (follow-ups' previous ones included) through data_source_query, as the
    model's statements go, with the row cap an assistant's answer has."""
    from django.conf import settings

    from datasources.connectors import QueryFailed
    from datasources.services import data_source_query
    from datasources.sql_guard import SqlRefused

    check = GoldCheck()
    seen: set[str] = set()
    for item in items:
        for sql in item.statements:
            if sql in seen:
                continue
            seen.add(sql)
            check.statements += 1
            started = time.perf_counter()
            try:
                result = data_source_query(data_source=source, sql=sql, row_cap=settings.DATA_SOURCE_ANSWER_ROWS)
            except SqlRefused as exc:
                check.guard_refused.append((item.id, sql, str(exc)))
                continue
            except QueryFailed as exc:
                check.database_refused.append((item.id, sql, str(exc)))
                continue
            finally:
                check.seconds.append(time.perf_counter() - started)
            if result.truncated:
                check.truncated.append(item.id)
            if sql == item.sql and not results_match(
                expected[item.id], [tuple(row) for row in result.rows], ordered=True, extra_columns=False
            ):
                check.differs.append(item.id)
    return check


def ask(
    *, source: DataSource, llm: ModelRegistration, item: SqlItem, expected: list[Row], team_id: int, user_id: int
) -> Answered:
    """One question through the platform's text-to-SQL path, with a `write` built as
    chat.services._sql_call builds it (invoke_metered on the assistant's model)."""
    from langchain_core.messages import BaseMessage

    from chat.services import invoke_metered
    from datasources.sql_guard import SqlRefused, sql_check
    from datasources.text_to_sql import SQL_FIX, sql_tool_call, statement_in

    replies: list[str] = []
    errors_sent: list[str] = []  # what each retry's prompt told the model about the last statement
    fix_before, fix_after = SQL_FIX.split("{error}")

    def write(prompt: list[BaseMessage], max_tokens: int) -> str:
        if replies:
            text = str(prompt[-1].content)
            errors_sent.append(text.removeprefix(fix_before).removesuffix(fix_after))
        reply = invoke_metered(llm=llm, prompt=prompt, max_tokens=max_tokens, team_id=team_id, user_id=user_id)
        replies.append(str(reply.content))
        return replies[-1]

    started = time.perf_counter()
    model_error = ""
    final_error = ""
    result_rows: list[Row] | None = None
    try:
        call = sql_tool_call(write=write, sources=[source], question=item.question, previous=item.previous)
        final_error = call.error
        if call.result is not None and not call.result.truncated:
            result_rows = [tuple(row) for row in call.result.rows]
    except Exception as exc:  # the model call failed: the turn would end in an error
        model_error = f"{type(exc).__name__}: {str(exc)[:200]}"
    seconds = time.perf_counter() - started

    statements = []
    for number, reply in enumerate(replies):
        sql = statement_in(reply)
        error = errors_sent[number] if number < len(errors_sent) else final_error
        try:
            sql_check(
                sql,
                dialect=source.dialect,
                allowed_tables=source.allowed_tables,
                default_schema=source.default_schema,
            )
        except SqlRefused as exc:
            statements.append(Statement(sql, "guard", reason_kind(str(exc), GUARD_REASONS)))
            continue
        if error:
            statements.append(Statement(sql, "database", reason_kind(error, DATABASE_REASONS)))
        else:
            statements.append(Statement(sql, "ran"))
    answered = Answered(
        item=item,
        statements=statements,
        seconds=seconds,
        model_error=model_error,
    )
    if result_rows is not None and not model_error:
        answered.correct = results_match(expected, result_rows, ordered=item.ordered, extra_columns=False)
        answered.correct_lenient = results_match(expected, result_rows, ordered=item.ordered, extra_columns=True)
    return answered


def sql_section(
    *,
    team: Team,
    user: User,
    models: list[tuple[str, ModelRegistration]],
    workdir: Path,
    log: Log,
    per_language: int | None = None,
) -> str:
    """The section: the database registered as a data source of `team`, the gold statements
    through the guard, then every question (the first `per_language` of each language, for a
    smoke run) asked of each model; the report's Markdown."""
    from django.conf import settings
    from django.core.files import File
    from langchain_core.messages import HumanMessage

    from datasources.models import DataSource
    from datasources.services import data_source_create, data_source_delete
    from models_registry.langchain_models import chat_model_for

    items = load_items()
    if per_language is not None:
        items = [item for code in LANGUAGE_LABELS for item in [i for i in items if i.lang == code][:per_language]]
    database = workdir / "sales.sqlite"
    build_database(database)
    expected = {item.id: read_rows(database, item.sql)[1] for item in items}
    for earlier in DataSource.objects.filter(team=team, name=SOURCE_NAME):
        data_source_delete(data_source=earlier)
    with database.open("rb") as handle:
        source = data_source_create(
            team=team,
            name=SOURCE_NAME,
            kind="sqlite",
            sqlite_file=File(handle, name="sales.sqlite"),
            description=SOURCE_DESCRIPTION,
            created_by=user,
        )
    log(f"text-to-SQL: {len(items)} questions; the gold statements through the guard")
    gold = gold_through_guard(source, items, expected)
    runs = []
    for label, llm in models:
        # Unmeasured: the first request after a launch is slow, and it opens the connection.
        chat_model_for(llm).invoke([HumanMessage("Hello")], max_tokens=4)
        answers = []
        for number, item in enumerate(items, start=1):
            answered = ask(
                source=source, llm=llm, item=item, expected=expected[item.id], team_id=team.pk, user_id=user.pk
            )
            answers.append(answered)
            log(
                f"text-to-SQL {label} {number}/{len(items)} {item.id}: "
                f"{'correct' if answered.correct else 'wrong'}, {len(answered.statements)} statements, "
                f"{answered.seconds:.1f}s{' ' + answered.model_error if answered.model_error else ''}"
            )
        runs.append(ModelRun(label, answers))
    database_rows = sum(
        read_rows(database, f'SELECT COUNT(*) FROM "{name}"')[1][0][0] for name in source.allowed_tables
    )
    retries, rows = settings.DATA_SOURCE_SQL_RETRIES, settings.DATA_SOURCE_ANSWER_ROWS
    return render_sql(items, gold, runs, database_rows=database_rows, retries=retries, rows=rows)


# --- The report --------------------------------------------------------------------------------


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "—"


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|") or "(empty)"


def _code(text: str, limit: int = 160) -> str:
    """A statement in a table cell: <code>, since a model's reply may hold backticks of its own."""
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return f"<code>{html.escape(flat, quote=False).replace('|', '&#124;')}</code>" if flat else "(empty)"


CONSTRUCTS = (  # what the gold statements use, as the report lists it: (label, fragment of the SQL)
    ("joins", " JOIN "),
    ("LEFT JOIN ... IS NULL", " IS NULL"),
    ("GROUP BY", "GROUP BY"),
    ("HAVING", "HAVING"),
    ("subqueries", "(SELECT"),
    ("NOT EXISTS", "NOT EXISTS"),
    ("INTERSECT", "INTERSECT"),
    ("CTEs", "WITH "),
    ("window functions", " OVER ("),
    ("CASE", "CASE WHEN"),
    ("COUNT(DISTINCT)", "COUNT(DISTINCT"),
    ("strftime", "STRFTIME("),
    ("julianday", "JULIANDAY("),
    ("LIKE", " LIKE "),
    ("BETWEEN", " BETWEEN "),
)


def _figures_row(label: str, answers: list[Answered]) -> str:
    statements = [statement for answer in answers for statement in answer.statements]
    questions = len(answers)
    correct = sum(answer.correct for answer in answers)
    lenient = sum(answer.correct_lenient for answer in answers)
    guard = sum(statement.outcome == "guard" for statement in statements)
    database = sum(statement.outcome == "database" for statement in statements)
    no_result = sum(not answer.answered for answer in answers)
    attempts = statistics.mean(len(answer.statements) for answer in answers) if answers else 0.0
    seconds = statistics.mean(answer.seconds for answer in answers) if answers else 0.0
    return (
        f"| {label} | {questions} | **{_share(correct, questions)}** ({correct}) | {_share(lenient, questions)} "
        f"({lenient}) | {_share(guard, len(statements))} ({guard}/{len(statements)}) | "
        f"{_share(database, len(statements))} ({database}/{len(statements)}) | {_share(no_result, questions)} | "
        f"{attempts:.2f} | {seconds:.1f} |"
    )


def render_sql(
    items: list[SqlItem], gold: GoldCheck, runs: list[ModelRun], *, database_rows: int, retries: int, rows: int
) -> str:
    from datasources.text_to_sql import SQL_MAX_TOKENS

    by_lang = Counter(item.lang for item in items)
    followups = sum(item.previous is not None for item in items)
    gold_refused = len(gold.guard_refused) + len(gold.database_refused)
    lines = [
        "## Text-to-SQL: execution accuracy on a sample sales database",
        "",
        f"{len(items)} questions ({', '.join(f'{LANGUAGE_LABELS[code]} {count}' for code, count in by_lang.items())}; "
        f"{followups} of them follow-ups) in `bench/questions/sql/sales.jsonl`, asked about a SQLite database "
        "built by `bench/sql_bench.py` from a fixed seed (6 tables: regions, employees, customers, products, "
        f"orders, order_items; {database_rows:,} rows), registered as a team's data source "
        "(`data_source_create`). Each question goes through `sql_tool_call` as an assistant's turn does: the "
        f"platform's prompt (schema with 3 sample rows per table, the source's description), {SQL_MAX_TOKENS} "
        f"tokens at most per statement, the guard, the read-only executor with the answer's row cap ({rows}), "
        f"and up to {retries} retries with the refusal sent back to the model. A follow-up carries the earlier "
        "question and its gold statement as the conversation's previous SQL.",
        "",
        "Correct: the result of the statement the platform settled on equals the gold statement's result "
        "(read with plain sqlite3) as a multiset of rows (a list where the question asks for an order), column "
        f"names ignored, columns matched in any order, numbers within a relative {REL_TOLERANCE:g}. *Extra "
        "columns allowed* also accepts a result with more columns than asked for (a name with its total). "
        "Refusal shares are over every statement written, retries included; *no result* is the share of "
        "questions where no statement ran.",
        "",
        "| model | questions | correct | correct, extra columns allowed | statements refused by the guard | "
        "refused by the database | no result | attempts (mean) | seconds / question (mean) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| gold SQL through the guard and executor | {gold.statements} statements | — | — | "
        f"{_share(len(gold.guard_refused), gold.statements)} ({len(gold.guard_refused)}/{gold.statements}) | "
        f"{_share(len(gold.database_refused), gold.statements)} ({len(gold.database_refused)}/{gold.statements}) "
        f"| {_share(gold_refused, gold.statements)} | 1.00 | "
        f"{statistics.mean(gold.seconds) if gold.seconds else 0:.3f} |",
    ]
    for run in runs:
        for code in LANGUAGE_LABELS:
            answers = [answer for answer in run.answers if answer.item.lang == code]
            if answers:
                lines.append(_figures_row(f"{run.label}, {LANGUAGE_LABELS[code]}", answers))
        lines.append(_figures_row(f"{run.label}, all", run.answers))
    lines += ["", "### Gold statements", ""]
    statements = " ".join(sql.upper() for item in items for sql in item.statements)
    constructs = ", ".join(label for label, fragment in CONSTRUCTS if fragment in statements)
    if not gold.guard_refused and not gold.database_refused:
        lines.append(f"All {gold.statements} gold statements passed the guard and ran; among them: {constructs}.")
    for item_id, sql, reason in gold.guard_refused:
        lines.append(f"- {item_id}: refused by the guard: {reason}. {_code(sql, 400)}")
    for item_id, sql, reason in gold.database_refused:
        lines.append(f"- {item_id}: refused by the database: {reason}. {_code(sql, 400)}")
    lines.append(
        "Their results through the platform equal sqlite3's."
        if not gold.differs
        else f"Results through the platform that differ from sqlite3's: {', '.join(gold.differs)}."
    )
    if gold.truncated:
        lines.append(f"Truncated at the row cap (so no model can match them): {', '.join(gold.truncated)}.")
    for run in runs:
        lines += render_model_details(run)
    return "\n".join(lines) + "\n"


def render_model_details(run: ModelRun) -> list[str]:
    statements = [statement for answer in run.answers for statement in answer.statements]
    guard = Counter(statement.reason for statement in statements if statement.outcome == "guard")
    database = Counter(statement.reason for statement in statements if statement.outcome == "database")
    model_errors = [answer for answer in run.answers if answer.model_error]
    tags = Counter(tag for answer in run.answers for tag in answer.item.tags)
    lines = [
        "",
        f"### {run.label}",
        "",
        f"Statements written: {len(statements)}. Refused by the guard: "
        + (", ".join(f"{reason} {count}" for reason, count in guard.most_common()) or "none")
        + ". Refused by the database: "
        + (", ".join(f"{reason} {count}" for reason, count in database.most_common()) or "none")
        + "."
        + (
            f" Model calls that failed: {len(model_errors)} (first: {model_errors[0].model_error})."
            if model_errors
            else ""
        ),
        "",
        "By kind of question (correct / asked; a question has several kinds):",
        "",
        "| " + " | ".join(tag for tag, _ in tags.most_common()) + " |",
        "|" + " ---: |" * len(tags),
        "| "
        + " | ".join(
            f"{sum(answer.correct for answer in run.answers if tag in answer.item.tags)}/{count}"
            for tag, count in tags.most_common()
        )
        + " |",
        "",
        "<details><summary>Every question: the last statement written, and what became of it</summary>",
        "",
        "| id | question | correct | statements | last outcome | last statement |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for answer in run.answers:
        last = answer.statements[-1] if answer.statements else None
        outcome = (
            "model call failed"
            if answer.model_error
            else (f"{last.outcome}{': ' + last.reason if last.reason else ''}" if last else "—")
        )
        mark = "yes" if answer.correct else ("extra columns" if answer.correct_lenient else "no")
        lines.append(
            f"| {answer.item.id} | {_cell(answer.item.question, 70)} | {mark} | {len(answer.statements)} | "
            f"{_cell(outcome, 60)} | {_code(last.sql if last else '')} |"
        )
    lines += ["", "</details>"]
    return lines


# --- The check (no Django, no model) -----------------------------------------------------------


def check(path: Path = QUESTIONS, row_cap: int = 30) -> list[str]:
    """Problems with the question file: fields, languages, duplicates, gold statements that fail,
    are refused by the guard, return nothing or more than `row_cap` rows (DATA_SOURCE_ANSWER_ROWS'
    default), an ordered item without ORDER BY, a follow-up whose answer is its previous one's."""
    import tempfile

    if str(BASE_DIR) not in sys.path:
        sys.path.insert(0, str(BASE_DIR))
    from datasources.sql_guard import SqlRefused, sql_check

    try:
        items = load_items(path)
    except ValueError as exc:
        return [str(exc)]
    problems = []
    counts = Counter(item.lang for item in items)
    problems += [f"fewer than 20 {LANGUAGE_LABELS[code]} questions" for code in LANGUAGE_LABELS if counts[code] < 20]
    ids = Counter(item.id for item in items)
    problems += [f"{item_id}: the id is used {count} times" for item_id, count in ids.items() if count > 1]
    asked = Counter(" | ".join([item.previous[0] if item.previous else "", item.question]).lower() for item in items)
    problems += [f"asked {count} times: {question}" for question, count in asked.items() if count > 1]
    with tempfile.TemporaryDirectory() as directory:
        database = Path(directory) / "sales.sqlite"
        build_database(database)
        tables = [name for (name,) in read_rows(database, "SELECT name FROM sqlite_schema WHERE type = 'table'")[1]]
        for item in items:
            results = []
            for sql in item.statements:
                try:
                    sql_check(sql, dialect="sqlite", allowed_tables=tables)
                except SqlRefused as exc:
                    problems.append(f"{item.id}: the guard refuses a gold statement: {exc}")
                try:
                    results.append(read_rows(database, sql)[1])
                except sqlite3.Error as exc:
                    problems.append(f"{item.id}: a gold statement fails: {exc}")
                    results.append([])
                    continue
                if not results[-1] or len(results[-1]) > row_cap:
                    problems.append(f"{item.id}: a gold statement returns {len(results[-1])} rows, not 1 to {row_cap}")
            if item.ordered and "ORDER BY" not in item.sql.upper():
                problems.append(f"{item.id}: ordered, but its gold statement has no ORDER BY")
            if item.previous and results[0] == results[1]:
                problems.append(f"{item.id}: the follow-up's answer is its previous question's")
    return problems


def main() -> int:
    if sys.argv[1:] != ["--check"]:
        print("usage: python bench/sql_bench.py --check   (the bench runs it from bench/run.py, BENCH_SQL_ONLY=1)")
        return 2
    items = load_items()
    problems = check()
    counts = Counter(item.lang for item in items)
    print(
        f"{QUESTIONS.relative_to(BASE_DIR)}: {len(items)} items ("
        + ", ".join(f"{code} {count}" for code, count in counts.items())
        + f"; {sum(item.previous is not None for item in items)} follow-ups)"
    )
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"{len(problems)} problems" if problems else "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
