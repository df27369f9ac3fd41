"""Connect each Python client to a Quiver server that has authentication and TLS on.

Every client checks the server's certificate against the CA that signed it (the
`QUIVER_TLS_CA` PEM file) and sends credentials with each call:

- ADBC Flight SQL with a user name and password: the driver sends them once (Flight
  SQL Handshake, `Basic`) and then the `Bearer` token the server answers with.
- ADBC Flight SQL with a token: an `authorization: Bearer <token>` header.
- pyarrow.flight: `authenticate_basic_token` does the handshake; its answer is the
  header to put in every call's `FlightCallOptions`.
- polars: `pl.read_database` over an ADBC connection made as above.
- grpcio (quiver.v1.Mutations): TLS channel credentials combined with the token as
  call credentials, so every call on the channel carries it. Writing needs a token
  with the role `write` (or `admin`); the queries above need only `read`.

    pip install adbc-driver-flightsql pyarrow polars grpcio grpcio-tools
    QUIVER_ADDR=grpc+tls://127.0.0.1:50051 QUIVER_TLS_CA=ca.pem \\
    QUIVER_USER=alice QUIVER_PASSWORD=... QUIVER_TOKEN=... python secure_clients.py

A server for it: `quiver serve --demo --auth-file auth.toml --tls-cert server.pem
--tls-key server.key` (users from `quiver auth hash-password`, tokens from
`quiver auth new-token`; see the README).
"""

import datetime
import os
import uuid
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import grpc
import polars as pl
import pyarrow as pa
import pyarrow.flight as flight
from adbc_driver_flightsql import DatabaseOptions
from google.protobuf import any_pb2, wrappers_pb2

import quiver_stubs


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise SystemExit(f"set {name} (see the top of {Path(__file__).name})")
    return value


ADDR = setting("QUIVER_ADDR", "grpc+tls://127.0.0.1:50051")
CA_PEM = Path(setting("QUIVER_TLS_CA")).read_text()  # the CA that signed the server's certificate
USER = setting("QUIVER_USER")
PASSWORD = setting("QUIVER_PASSWORD")
TOKEN = setting("QUIVER_TOKEN")  # role `write`: the Mutations call below inserts a row
TIMEOUT_S = 30

# Every Flight SQL call gives up after 30 s instead of waiting on a stuck server.
TIMEOUTS = {
    DatabaseOptions.TIMEOUT_QUERY.value: str(TIMEOUT_S),
    DatabaseOptions.TIMEOUT_FETCH.value: str(TIMEOUT_S),
    DatabaseOptions.TIMEOUT_UPDATE.value: str(TIMEOUT_S),
}
# TLS for ADBC: the CA's PEM text itself (not a path), with a grpc+tls:// URI.
ADBC_TLS = {**TIMEOUTS, DatabaseOptions.TLS_ROOT_CERTS.value: CA_PEM}

pb, pb_grpc = quiver_stubs.load("mutations")


def adbc_with_password():
    """An ADBC connection that logs in with the user name and password."""
    return flight_sql.connect(ADDR, db_kwargs={**ADBC_TLS, "username": USER, "password": PASSWORD}, autocommit=True)


def adbc_with_token():
    """An ADBC connection that sends the token as it is (a static token or a JWT)."""
    bearer = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {TOKEN}"}
    return flight_sql.connect(ADDR, db_kwargs={**ADBC_TLS, **bearer}, autocommit=True)


def flight_sql_query(sql: str) -> bytes:
    """The Flight SQL command of a query, for plain pyarrow.flight (which has no Flight
    SQL client): a `CommandStatementQuery` packed in a protobuf `Any`. Its only field
    here, `string query = 1`, is encoded exactly as a `StringValue`."""
    query = wrappers_pb2.StringValue(value=sql).SerializeToString()
    type_url = "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return any_pb2.Any(type_url=type_url, value=query).SerializeToString()


def main():
    print(f"server: {ADDR}")

    # 1. ADBC, user name and password.
    with adbc_with_password() as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")
        print(f"adbc, user {USER}: tasks per status {dict(cur.fetchall())}")

    # 2. ADBC, token.
    with adbc_with_token() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM epics")
        print(f"adbc, token: {cur.fetchone()[0]} epics")

    # 3. pyarrow.flight: the handshake answers ("authorization", "Bearer <token>"),
    # the header every later call sends.
    client = flight.FlightClient(ADDR, tls_root_certs=CA_PEM)
    try:
        header = client.authenticate_basic_token(USER, PASSWORD, flight.FlightCallOptions(timeout=TIMEOUT_S))
        options = flight.FlightCallOptions(headers=[header], timeout=TIMEOUT_S)
        descriptor = flight.FlightDescriptor.for_command(flight_sql_query("SELECT count(*) AS n FROM features"))
        info = client.get_flight_info(descriptor, options)
        table = pa.concat_tables([client.do_get(endpoint.ticket, options).read_all() for endpoint in info.endpoints])
        print(f"pyarrow.flight, user {USER}: {table.column('n')[0].as_py()} features")
    finally:
        client.close()

    # 4. polars, over an ADBC connection with credentials (pl.read_database_uri cannot
    # pass the driver TLS or credential options).
    with adbc_with_password() as conn:
        df = pl.read_database("SELECT priority, count(*) AS tasks FROM tasks GROUP BY priority ORDER BY priority", conn)
    print(f"polars, user {USER}: tasks per priority {dict(df.iter_rows())}")

    # 5. grpcio, quiver.v1.Mutations: TLS + the token on every call of the channel.
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=CA_PEM.encode()),
        grpc.access_token_call_credentials(TOKEN),  # sends `authorization: Bearer <token>`
    )
    key = f"EX-TLS-{uuid.uuid4().hex[:8]}"  # unique, so the example can be re-run
    now = pb.Value(timestamp_micros=int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1_000_000))
    epic = pb.Row(
        values={
            "key": pb.Value(string=key),
            "title": pb.Value(string="Written over TLS"),
            "status": pb.Value(string="planned"),
            "priority": pb.Value(int64=3),
            "created_at": now,
            "updated_at": now,
        }
    )
    with grpc.secure_channel(ADDR.removeprefix("grpc+tls://"), credentials) as channel:
        stub = pb_grpc.MutationsStub(channel)
        inserted = stub.Insert(pb.InsertRequest(table="epics", rows=pb.Rows(rows=[epic])), timeout=TIMEOUT_S)
    [epic_id] = [k.values["id"].int64 for k in inserted.generated_keys]
    print(f"grpcio mutations, token: inserted epic {key} id={epic_id} commit_version={inserted.commit_version}")

    # The insert, as the user sees it.
    with adbc_with_password() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM epics WHERE key = ?", (key,))
        found = cur.fetchall()
    print(f"read back by {USER}: {found}")
    if found != [(epic_id,)]:
        raise SystemExit(f"epic {key} (id {epic_id}) not found")


if __name__ == "__main__":
    main()
