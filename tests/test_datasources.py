"""Data sources (issue 19): the SQL guard against a hostile list on a real PostgreSQL (reached over
TCP, as a user's DSN would) and a real SQLite file, data unchanged after; the API with other teams'
ids; and assistants answering in SQL, with a scripted model server standing in for the model
(named so: it replays fixed replies) and once with the real offline model."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from accounts.models import Role
from chat.models import Message
from chat.services import assistant_create, conversation_create, turn_prepare
from chat.streaming import turn_answer
from datasources.connectors import QueryFailed
from datasources.models import DataSource
from datasources.services import data_source_create, data_source_query, data_source_update
from datasources.sql_guard import SqlRefused
from models_registry.services import provider_create, registration_create, registration_launch
from realservices.offline_models import offline_models_on
from realservices.xinference import XinferenceServer, free_port
from tests.conftest import bearer_client, member_of
from tests.model_stand_in import ScriptedModelStandIn, scripted_model_server

pytestmark = pytest.mark.django_db(transaction=True)

CUSTOMERS = [(1, "Acme", "DE"), (2, "Globex", "US"), (3, "Initech", "US")]
ORDERS = [(i, 1 + i % 3, 10.0 * i, f"{2023 + i % 2}-0{1 + i % 9}-15") for i in range(1, 201)]
SECRETS = [(1, "sk-live-do-not-read")]

# Every statement here must be refused by the guard or fail in the database, and leave the data
# as it was. (The pair: the statement, and the dialects it is sent in.)
HOSTILE = [
    "DROP TABLE orders",
    "UPDATE orders SET amount = 0",
    "DELETE FROM orders",
    "INSERT INTO orders VALUES (999, 1, 1, '2024-01-01')",
    "SELECT * FROM orders; DROP TABLE orders",
    "SELECT 1; UPDATE orders SET amount = 0",
    "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
    "WITH changed AS (UPDATE orders SET amount = 0 RETURNING id) SELECT count(*) FROM changed",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "COPY orders TO '/tmp/orders.csv'",
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "PRAGMA writable_schema = ON",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT nextval('orders_id_seq')",
    "SELECT query_to_xml('DELETE FROM orders', true, true, '')",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT * INTO stolen FROM orders",
    "SELECT * FROM orders FOR UPDATE",
    "SELECT * FROM secrets",
    "SELECT o.id FROM orders o WHERE o.customer_id IN (SELECT id FROM secrets)",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT * FROM sqlite_master",
    "CREATE TABLE evil (id int)",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "SET statement_timeout = 0",
    "BEGIN; DELETE FROM orders; COMMIT",
]


def fill(execute: Any) -> None:
    execute("CREATE TABLE customers (id integer PRIMARY KEY, name text, country text)")
    execute("CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer, amount numeric, ordered_on date)")
    execute("CREATE TABLE secrets (id integer PRIMARY KEY, token text)")
    for customer in CUSTOMERS:
        execute("INSERT INTO customers VALUES (%s, %s, %s)", customer)
    for order in ORDERS:
        execute("INSERT INTO orders VALUES (%s, %s, %s, %s)", order)
    for secret in SECRETS:
        execute("INSERT INTO secrets VALUES (%s, %s)", secret)


def sqlite_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "sales.sqlite"
    with sqlite3.connect(path) as database:
        fill(lambda sql, params=(): database.execute(sql.replace("%s", "?"), params))
    return path.read_bytes()


class UnixSocketForwarder:
    """127.0.0.1:port → the embedded PostgreSQL's unix socket (it listens on no TCP port), so the
    test reaches it the way a user's DSN reaches a database server: by host and port."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.socket_path)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def sales_postgres(django_db_blocker: Any) -> Iterator[str]:
    """A `sales` database beside the test database, with a read-only role, and its DSN over TCP."""
    settings_dict = connection.settings_dict
    socket_dir = settings_dict["HOST"]
    socket_path = next(str(path) for path in Path(socket_dir).glob(".s.PGSQL.*") if path.suffix != ".lock")
    name = f"sales_{settings_dict['NAME']}"[:60]
    admin = f"host={socket_dir} user={settings_dict['USER']} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}"')
        server.execute(f'CREATE DATABASE "{name}"')
        server.execute(
            "DO $$ BEGIN CREATE ROLE sales_reader LOGIN PASSWORD 'reader'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    with psycopg.connect(f"host={socket_dir} user={settings_dict['USER']} dbname={name}", autocommit=True) as sales:
        fill(sales.execute)
        sales.execute("CREATE SEQUENCE orders_id_seq")
        sales.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO sales_reader")
        sales.execute("GRANT USAGE, SELECT, UPDATE ON SEQUENCE orders_id_seq TO sales_reader")
    forwarder = UnixSocketForwarder(socket_path)
    try:
        yield f"postgresql://sales_reader:reader@127.0.0.1:{forwarder.port}/{name}"
    finally:
        forwarder.close()


MARIADB = "/usr/sbin/mariadbd"  # Debian's mariadb-server, installed by `make test` (Makefile)
MYSQL_HOSTILE = [
    "SELECT * FROM orders INTO OUTFILE '/tmp/orders.txt'",
    "SELECT LOAD_FILE('/etc/passwd')",
    "SELECT SLEEP(30)",
    "SELECT BENCHMARK(100000000, MD5('x'))",
    "SELECT @@datadir",
    "SELECT * FROM mysql.user",
    "SELECT * FROM information_schema.tables",
    "HANDLER orders OPEN",
    "LOCK TABLES orders WRITE",
    "SELECT GET_LOCK('x', 10)",
    "SELECT * FROM orders LOCK IN SHARE MODE",
]


@pytest.fixture(scope="module")
def mariadb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real MariaDB server of the test's own (a data directory in tmp, loopback TCP), with a
    `sales` database filled like the others and a read-only user."""
    base = tmp_path_factory.mktemp("mariadb")
    datadir, socket_path = base / "data", str(base / "mysqld.sock")
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--skip-test-db",
         "--auth-root-authentication-method=normal", *as_root],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [MARIADB, "--no-defaults", f"--datadir={datadir}", f"--socket={socket_path}", f"--port={port}",
         "--bind-address=127.0.0.1", "--skip-log-bin", "--innodb-buffer-pool-size=16M", *as_root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                admin = pymysql.connect(unix_socket=socket_path, user="root", autocommit=True)
                break
            except pymysql.Error:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE sales")
            cursor.execute("USE sales")
            fill(cursor.execute)
            cursor.execute("CREATE USER 'sales_reader'@'%' IDENTIFIED BY 'reader'")
            cursor.execute("GRANT SELECT ON sales.* TO 'sales_reader'@'%'")
        admin.close()
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def snapshot_mysql(port: int) -> list[Any]:
    database = pymysql.connect(host="127.0.0.1", port=port, user="sales_reader", password="reader", database="sales")
    try:
        with database.cursor() as cursor:
            cursor.execute("SELECT * FROM orders ORDER BY id")
            orders = cursor.fetchall()
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'sales'")
            tables = sorted(cursor.fetchall())
        return [orders, tables]
    finally:
        database.close()


def snapshot_postgres(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as database:
        return [
            database.execute("SELECT id, customer_id, amount, ordered_on FROM orders ORDER BY id").fetchall(),
            database.execute("SELECT * FROM secrets").fetchall(),
            database.execute("SELECT last_value, is_called FROM orders_id_seq").fetchall(),
            database.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchall(),
        ]


def snapshot_sqlite(path: str) -> list[Any]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
        return [
            database.execute("SELECT * FROM orders ORDER BY id").fetchall(),
            database.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall(),
        ]


def sales_sources(team, sales_postgres: str, tmp_path: Path) -> tuple[DataSource, DataSource]:
    postgres = data_source_create(team=team, name="Sales PG", kind="postgresql", dsn=sales_postgres)
    sqlite = data_source_create(
        team=team,
        name="Sales file",
        kind="sqlite",
        sqlite_file=SimpleUploadedFile("sales.sqlite", sqlite_bytes(tmp_path)),
    )
    # The admin's choice: secrets stays out of every query.
    data_source_update(data_source=postgres, allowed_tables=["public.customers", "public.orders"])
    data_source_update(data_source=sqlite, allowed_tables=["customers", "orders"])
    return postgres, sqlite


def test_the_guard_refuses_every_hostile_statement_and_the_data_is_unchanged(
    team, sales_postgres: str, mariadb_port: int, tmp_path: Path, settings
) -> None:
    postgres, sqlite = sales_sources(team, sales_postgres, tmp_path)
    mysql = data_source_create(
        team=team, name="Sales MySQL", kind="mysql", dsn=f"mysql://sales_reader:reader@127.0.0.1:{mariadb_port}/sales"
    )
    data_source_update(data_source=mysql, allowed_tables=["customers", "orders"])
    sqlite_path = sqlite.sqlite_file.path
    before = (snapshot_postgres(sales_postgres), snapshot_sqlite(sqlite_path), snapshot_mysql(mariadb_port))

    for source in (postgres, sqlite, mysql):
        for statement in HOSTILE + MYSQL_HOSTILE:
            with pytest.raises((SqlRefused, QueryFailed)):
                data_source_query(data_source=source, sql=statement)
        # What may run does, with the same answer on both.
        result = data_source_query(
            data_source=source,
            sql="SELECT c.country, count(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id "
            "GROUP BY c.country ORDER BY c.country",
        )
        assert result.columns == ["country", "orders"]
        assert result.rows == [["DE", 66], ["US", 134]]
    assert [table["name"] for table in mysql.tables] == ["customers", "orders", "secrets"]

    # The time limit and the row cap: a cross join far too big, and more rows than the cap.
    settings.DATA_SOURCE_STATEMENT_TIMEOUT_S = 1.0
    settings.DATA_SOURCE_ROW_CAP = 50
    huge = "SELECT count(*) FROM orders a, orders b, orders c, orders d"
    for source in (postgres, sqlite, mysql):
        statement = huge
        with pytest.raises(QueryFailed, match="limit"):
            data_source_query(data_source=source, sql=statement)
        capped = data_source_query(data_source=source, sql="SELECT a.id FROM orders a, orders b")
        assert capped.row_count == 50
        assert capped.truncated is True
        whole = data_source_query(data_source=source, sql="SELECT id FROM customers")
        assert (whole.row_count, whole.truncated) == (3, False)

    assert (snapshot_postgres(sales_postgres), snapshot_sqlite(sqlite_path), snapshot_mysql(mariadb_port)) == before


def test_the_api_registers_introspects_queries_and_keeps_other_teams_out(
    team, other_team, sales_postgres: str, tmp_path: Path, settings
) -> None:
    admin = member_of(team, Role.ADMIN)
    client = bearer_client(admin, team)
    member_client = bearer_client(member_of(team, Role.MEMBER), team)
    viewer_client = bearer_client(member_of(team, Role.VIEWER), team)
    outsider_client = bearer_client(member_of(other_team, Role.ADMIN), other_team)

    # Register: a SQLite upload and a DSN; the password never comes back.
    upload = SimpleUploadedFile("sales.sqlite", sqlite_bytes(tmp_path))
    created = client.post(
        "/api/v1/data-sources/", {"name": "Sales", "kind": "sqlite", "file": upload}, format="multipart"
    )
    assert created.status_code == 201, created.json()
    sqlite_id = created.json()["id"]
    assert set(created.json()["allowed_tables"]) == {"customers", "orders", "secrets"}
    by_dsn = client.post(
        "/api/v1/data-sources/", {"name": "Sales PG", "kind": "postgresql", "dsn": sales_postgres}, format="json"
    )
    assert by_dsn.status_code == 201, by_dsn.json()
    assert "reader@" not in json.dumps(by_dsn.json())
    assert "***" in by_dsn.json()["dsn_display"]

    # Bad input, each a 400 that says what to do.
    refusals = {
        "an unresolvable host": {"name": "M", "kind": "mysql", "dsn": "mysql://u:p@db.invalid/x"},
        "socket": {"name": "S", "kind": "postgresql", "dsn": "host=/var/run/postgresql dbname=x user=u"},
        "passfile": {"name": "P", "kind": "postgresql", "dsn": f"{sales_postgres}?sslkey=/etc/ssl/private/key.pem"},
        "no dsn": {"name": "N", "kind": "postgresql"},
    }
    for label, body in refusals.items():
        response = client.post("/api/v1/data-sources/", body, format="json")
        assert response.status_code == 400, (label, response.json())
    not_sqlite = SimpleUploadedFile("sales.sqlite", b"name,amount\nx,1\n")
    response = client.post(
        "/api/v1/data-sources/", {"name": "Csv", "kind": "sqlite", "file": not_sqlite}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "not_a_sqlite_file"
    settings.OUTBOUND_ALLOWED_NETWORKS = []  # the SSRF guard as production has it: loopback refused
    response = client.post(
        "/api/v1/data-sources/", {"name": "Local", "kind": "postgresql", "dsn": sales_postgres}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsafe_url"
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]

    # Schema, then the admin narrows the tables; members query, viewers do not, nobody writes.
    schema = client.get(f"/api/v1/data-sources/{sqlite_id}/schema/").json()
    orders = next(table for table in schema["tables"] if table["name"] == "orders")
    assert [column["name"] for column in orders["columns"]] == ["id", "customer_id", "amount", "ordered_on"]
    assert len(orders["sample_rows"]) == 3
    patched = client.patch(
        f"/api/v1/data-sources/{sqlite_id}/", {"allowed_tables": ["customers", "orders"]}, format="json"
    )
    assert patched.status_code == 200
    assert patched.json()["allowed_tables"] == ["customers", "orders"]
    assert (
        client.patch(f"/api/v1/data-sources/{sqlite_id}/", {"allowed_tables": ["nope"]}, format="json").status_code
        == 400
    )
    assert member_client.patch(f"/api/v1/data-sources/{sqlite_id}/", {"name": "x"}, format="json").status_code == 403
    # Members read the allowed tables only (the excluded one's rows are not theirs to see); only
    # admins read the schema again from the database.
    schema_url = f"/api/v1/data-sources/{sqlite_id}/schema/"
    member_schema = member_client.get(schema_url).json()
    assert [table["name"] for table in member_schema["tables"]] == ["customers", "orders"]
    assert "secrets" in [table["name"] for table in client.get(schema_url).json()["tables"]]
    assert member_client.post(schema_url).status_code == 403
    assert client.post(schema_url).status_code == 200
    query = f"/api/v1/data-sources/{sqlite_id}/query/"
    answered = member_client.post(
        query, {"sql": "SELECT name FROM customers WHERE country = 'US' ORDER BY id"}, format="json"
    )
    assert answered.status_code == 200
    assert answered.json() == {
        "columns": ["name"],
        "rows": [["Globex"], ["Initech"]],
        "row_count": 2,
        "truncated": False,
    }
    refused = member_client.post(query, {"sql": "SELECT token FROM secrets"}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "sql_refused"
    assert "secrets" in refused.json()["error"]["message"]
    assert (
        member_client.post(query, {"sql": "DELETE FROM orders"}, format="json").json()["error"]["code"] == "sql_refused"
    )
    assert viewer_client.post(query, {"sql": "SELECT 1"}, format="json").status_code == 403
    assert member_client.post(query, {"sql": "SELECT 1", "dialect": "x"}, format="json").status_code == 400

    # Another team: not found everywhere, and its ids refused in every field of a write.
    for path in (f"/api/v1/data-sources/{sqlite_id}/", f"/api/v1/data-sources/{sqlite_id}/schema/"):
        assert outsider_client.get(path).status_code == 404
    assert outsider_client.post(query, {"sql": "SELECT 1"}, format="json").status_code == 404
    assert (
        outsider_client.patch(f"/api/v1/data-sources/{sqlite_id}/", {"name": "mine"}, format="json").status_code == 404
    )
    assert outsider_client.delete(f"/api/v1/data-sources/{sqlite_id}/").status_code == 404
    assert outsider_client.get("/api/v1/data-sources/").json()["results"] == []
    moved = client.patch(f"/api/v1/data-sources/{sqlite_id}/", {"team": other_team.pk}, format="json")
    assert moved.status_code == 400
    into_other = client.post(
        "/api/v1/data-sources/",
        {"name": "X", "kind": "postgresql", "dsn": sales_postgres, "team": other_team.pk},
        format="json",
    )
    assert into_other.status_code == 404
    outsider_llm = registration_create(
        provider=provider_create(team=other_team, name="p", kind="openai_compatible", endpoint="http://127.0.0.1:9"),
        kind="llm",
        name="theirs",
        provider_model_uid="m",
    )
    assistant = outsider_client.post(
        "/api/v1/assistants/", {"name": "Spy", "llm": outsider_llm.pk, "data_sources": [sqlite_id]}, format="json"
    )
    assert assistant.status_code == 400
    assert "data_sources" in json.dumps(assistant.json())
    assert DataSource.objects.get(pk=sqlite_id).name == "Sales"
    assert DataSource.objects.filter(team=other_team).count() == 0

    # Deleting removes the file too.
    file_path = Path(DataSource.objects.get(pk=sqlite_id).sqlite_file.path)
    assert client.delete(f"/api/v1/data-sources/{sqlite_id}/").status_code == 204
    assert not file_path.exists()


@pytest.fixture
def scripted_model() -> Iterator[tuple[str, type[ScriptedModelStandIn]]]:
    yield from scripted_model_server()


def test_an_assistant_answers_in_sql_corrects_a_refused_statement_and_refines_a_follow_up(
    team, tmp_path: Path, scripted_model, client
) -> None:
    endpoint, model = scripted_model
    user = member_of(team, Role.MEMBER)
    source = data_source_create(
        team=team, name="Sales", kind="sqlite", sqlite_file=SimpleUploadedFile("s.sqlite", sqlite_bytes(tmp_path))
    )
    data_source_update(data_source=source, allowed_tables=["customers", "orders"])
    provider = provider_create(team=team, name="scripted", kind="openai_compatible", endpoint=endpoint)
    llm = registration_create(provider=provider, kind="llm", name="Scripted", provider_model_uid="scripted")
    assistant = assistant_create(team=team, name="Analyst", llm=llm, data_sources=[source])
    conversation = conversation_create(team=team, owner=user, assistant=assistant)

    model.replies[:] = [
        "```sql\nSELECT token FROM secrets\n```",  # refused: the model is told why and tries again
        "```sql\nSELECT c.country, count(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id "
        "GROUP BY c.country ORDER BY c.country\n```",
        "US customers placed 134 orders, DE customers 66.",
    ]
    answer = turn_answer(turn=turn_prepare(conversation=conversation, author=user, content="Orders per country?"))
    [call] = answer.tool_calls
    assert call["attempts"] == 2
    assert call["error"] == ""
    assert call["rows"] == [["DE", 66], ["US", 134]]
    assert "secrets" in model.requests[1]["messages"][-1]["content"]  # the refusal went back to the model
    final_prompt = model.requests[2]["messages"][0]["content"]
    assert "| DE | 66 |" in final_prompt
    assert "GROUP BY c.country" in final_prompt
    assert answer.content == "US customers placed 134 orders, DE customers 66."

    # The follow-up sees the previous question and statement, and its own result is its own.
    model.replies[:] = [
        "```sql\nSELECT c.country, count(*) AS orders FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE o.ordered_on LIKE '2024%' GROUP BY c.country ORDER BY c.country\n```",
        "In 2024: DE 33, US 67.",
    ]
    follow_up = turn_answer(turn=turn_prepare(conversation=conversation, author=user, content="and only for 2024?"))
    writer_prompt = model.requests[3]["messages"]
    assert writer_prompt[-1]["content"] == "and only for 2024?"
    assert "GROUP BY c.country" in writer_prompt[-2]["content"]
    assert writer_prompt[-3]["content"] == "Orders per country?"
    assert follow_up.tool_calls[0]["rows"] == [["DE", 33], ["US", 67]]

    # What a person sees after a reload: the SQL, the result table and a chart, escaped.
    client.force_login(user)
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert page.count('data-testid="tool-call-sql"') == 2
    assert "ordered_on LIKE &#x27;2024%&#x27;" in page
    assert "<td>US</td><td>134</td>" in page
    assert "<td>US</td><td>67</td>" in page
    assert 'data-testid="tool-call-chart"' in page
    assert Message.objects.filter(conversation=conversation, role="assistant").count() == 2


def test_the_real_model_writes_a_statement_that_is_checked_and_recorded(
    team, tmp_path: Path, xinference: XinferenceServer, settings
) -> None:
    """SmolLM2-135M rarely writes right SQL; what must hold is the path: its statement checked, run
    or refused with the reason, recorded with the answer, and the answer completed."""
    settings.DATA_SOURCE_SQL_RETRIES = 0
    llm, _embedding = offline_models_on(team, xinference.endpoint)
    registration_launch(registration=llm)
    user = member_of(team, Role.MEMBER)
    source = data_source_create(
        team=team, name="Sales", kind="sqlite", sqlite_file=SimpleUploadedFile("s.sqlite", sqlite_bytes(tmp_path))
    )
    assistant = assistant_create(team=team, name="Analyst", llm=llm, data_sources=[source], max_answer_tokens=24)
    conversation = conversation_create(team=team, owner=user, assistant=assistant)
    answer = turn_answer(
        turn=turn_prepare(conversation=conversation, author=user, content="How many customers are there?")
    )
    [call] = answer.tool_calls
    assert call["sql"]
    assert call["data_source_name"] == "Sales"
    assert call["attempts"] == 1
    assert (call["error"] == "") == bool(call["columns"])
    assert answer.status == "complete"
    assert answer.content
