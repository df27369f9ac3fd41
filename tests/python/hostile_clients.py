"""Clients for the hostile-client probes (test_hostile.py): a raw Flight SQL client over
grpcio that sends hand-encoded protobuf (so a probe gets the server's exact gRPC status
code and message, and can send bytes no well-behaved client would), hand-built Arrow
IPC payloads, direct reads of Quiver's internal tables wherever they live, and probes
of the server process (alive, RSS, CPU)."""

import os
import re
import socket
import struct
import threading
import time

import grpc
import pyarrow as pa

# --- Protobuf wire format ---------------------------------------------------------------
#
# Just enough to write and read the Flight and Flight SQL messages by field number:
# varints (wire type 0), 64-bit (1) and length-delimited fields (2).


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives: ten bytes, two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_field(number: int, value) -> bytes:
    """One field: an int is a varint, bytes/str are length-delimited (str as UTF-8)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(number << 3 | 2) + _varint(len(value)) + bytes(value)


def pb_message(*fields) -> bytes:
    """A message from (number, value) pairs; pairs whose value is None are left out."""
    return b"".join(pb_field(number, value) for number, value in fields if value is not None)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def pb_decode(data: bytes) -> dict[int, list]:
    """Field number -> list of values (ints for varint/fixed fields, bytes otherwise)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value = struct.unpack_from("<q", data, pos)[0]
            pos += 8
        elif wire == 5:
            value = struct.unpack_from("<i", data, pos)[0]
            pos += 4
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value = bytes(data[pos : pos + length])
            pos += length
        else:
            raise ValueError(f"wire type {wire} at {pos}")
        fields.setdefault(number, []).append(value)
    return fields


def pb_first(data: bytes, number: int, default=None):
    return pb_decode(data).get(number, [default])[0]


# --- Flight SQL commands ----------------------------------------------------------------

SQL_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."


def any_of(name: str, body: bytes) -> bytes:
    """A google.protobuf.Any holding the Flight SQL message `name` (bare name)."""
    return pb_message((1, SQL_PREFIX + name), (2, body))


def statement_query(sql: str, transaction_id: bytes | None = None) -> bytes:
    return any_of("CommandStatementQuery", pb_message((1, sql), (2, transaction_id)))


def statement_update(sql: str, transaction_id: bytes | None = None) -> bytes:
    return any_of("CommandStatementUpdate", pb_message((1, sql), (2, transaction_id)))


def prepared_query(handle: bytes) -> bytes:
    return any_of("CommandPreparedStatementQuery", pb_message((1, handle)))


def prepared_update(handle: bytes) -> bytes:
    return any_of("CommandPreparedStatementUpdate", pb_message((1, handle)))


def create_prepared(sql: str, transaction_id: bytes | None = None) -> bytes:
    return any_of("ActionCreatePreparedStatementRequest", pb_message((1, sql), (2, transaction_id)))


def close_prepared(handle: bytes) -> bytes:
    return any_of("ActionClosePreparedStatementRequest", pb_message((1, handle)))


def begin_transaction() -> bytes:
    return any_of("ActionBeginTransactionRequest", b"")


COMMIT, ROLLBACK = 1, 2


def end_transaction(transaction_id: bytes, action: int) -> bytes:
    return any_of("ActionEndTransactionRequest", pb_message((1, transaction_id), (2, action)))


# TableDefinitionOptions: if_not_exist CREATE = 1; if_exists FAIL = 1, APPEND = 2, REPLACE = 3.
INGEST_CREATE = pb_message((1, 1), (2, 1))
INGEST_APPEND = pb_message((1, 2), (2, 2))


def statement_ingest(table: str, options: bytes = INGEST_CREATE, transaction_id: bytes | None = None) -> bytes:
    return any_of("CommandStatementIngest", pb_message((1, options), (2, table), (6, transaction_id)))


def get_tables(catalog=None, schema_pattern=None, table_pattern=None, table_types=(), include_schema=False) -> bytes:
    fields = [(1, catalog), (2, schema_pattern), (3, table_pattern)]
    fields += [(4, t) for t in table_types]
    fields.append((5, include_schema or None))
    return any_of("CommandGetTables", pb_message(*fields))


def ticket_statement(handle: bytes) -> bytes:
    return any_of("TicketStatementQuery", pb_message((1, handle)))


def flight_descriptor(command: bytes) -> bytes:
    """FlightDescriptor of type CMD (2) carrying `command`."""
    return pb_message((1, 2), (2, command))


# --- Arrow IPC ----------------------------------------------------------------------------


def ipc_stream(batches, schema=None) -> bytes:
    """An Arrow IPC stream of `batches` (a list of RecordBatch) as bytes."""
    schema = schema if schema is not None else batches[0].schema
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def ipc_messages(stream: bytes) -> list[tuple[bytes, bytes]]:
    """The (flatbuffer header, body) of each message of an IPC stream: what FlightData
    carries as data_header and data_body."""
    reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(stream))
    out = []
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            return out
        if message is None:
            return out
        body = message.body.to_pybytes() if message.body is not None else b""
        out.append((message.metadata.to_pybytes(), body))


def ipc_from_flight_data(messages) -> pa.Table:
    """The table of a DoGet answer (FlightData bytes as the server sent them)."""
    out = bytearray()
    for data in messages:
        fields = pb_decode(data)
        header = fields.get(2, [b""])[0]
        body = fields.get(1000, [b""])[0]
        if not header:
            continue
        padded = header + b"\0" * (-len(header) % 8)
        out += struct.pack("<Ii", 0xFFFFFFFF, len(padded)) + padded + body
    out += struct.pack("<Ii", 0xFFFFFFFF, 0)
    return pa.ipc.open_stream(pa.py_buffer(bytes(out))).read_all()


def huge_batch_stream(rows: int, null_columns=()) -> bytes:
    """An IPC stream of one record batch declaring `rows` rows (e.g. 2**31-2) that
    costs nothing to build or send (a few hundred bytes).

    With no `null_columns` the batch has zero columns: pyarrow makes one from a struct
    array with no fields, whose length is given outright
    (`StructArray.from_buffers(struct([]), rows, [None], children=[])`). Otherwise
    each named column is of the null type (`pa.nulls(rows)`): the null layout has no
    buffers, so only the declared lengths (the RecordBatch `length` and each
    FieldNode's) say how many rows there are. A reader that allocates per declared row
    before checking a limit is what this attacks."""
    if null_columns:
        batch = pa.record_batch([pa.nulls(rows) for _ in null_columns], names=list(null_columns))
    else:
        empty = pa.StructArray.from_buffers(pa.struct([]), rows, [None], children=[])
        batch = pa.RecordBatch.from_struct_array(empty)
    assert batch.num_rows == rows
    return ipc_stream([batch])


# --- gRPC errors --------------------------------------------------------------------------

GO_CODE_NAMES = {  # grpc-go's code names, as the ADBC driver prints them
    "".join(part.capitalize() for part in code.name.split("_")): code for code in grpc.StatusCode
}
GO_CODE_NAMES["Canceled"] = grpc.StatusCode.CANCELLED


def adbc_code(error) -> tuple[grpc.StatusCode | None, str]:
    """The gRPC code and server message of an ADBC Flight SQL driver error: its text
    reads `CODE: [FlightSQL] <server message> (GoCodeName; Call)`."""
    text = str(error)
    match = re.search(r"\[FlightSQL\] (.*) \((\w+); [^()]*\)\s*$", text, re.S)
    if not match:
        return None, text
    return GO_CODE_NAMES.get(match.group(2)), match.group(1)


# --- A raw Flight client -------------------------------------------------------------------

FLIGHT = "/arrow.flight.protocol.FlightService/"


def identity(b):
    return b


def own_channel(addr: str, max_message_mb: int = 256) -> grpc.Channel:
    """A channel on a TCP connection of its own: grpcio otherwise shares connections
    between channels to the same address, and the server tells callers apart by
    connection."""
    return grpc.insecure_channel(
        addr,
        options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", max_message_mb << 20),
            ("grpc.max_send_message_length", max_message_mb << 20),
        ],
    )


class RawFlight:
    """The Flight service over grpcio with hand-encoded messages: every call returns
    raw protobuf bytes or raises grpc.RpcError with the server's own code and message."""

    def __init__(self, addr: str, timeout: float = 30):
        self.channel = own_channel(addr)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.timeout = timeout
        self._info = self.channel.unary_unary(FLIGHT + "GetFlightInfo", identity, identity)
        self._get = self.channel.unary_stream(FLIGHT + "DoGet", identity, identity)
        self._put = self.channel.stream_stream(FLIGHT + "DoPut", identity, identity)
        self._action = self.channel.unary_stream(FLIGHT + "DoAction", identity, identity)

    def close(self):
        self.channel.close()

    # Raw calls: `request` is the serialized request message.
    def get_flight_info_raw(self, request: bytes, timeout=None) -> bytes:
        return self._info(request, timeout=timeout or self.timeout)

    def do_get_raw(self, request: bytes, timeout=None) -> list[bytes]:
        return list(self._get(request, timeout=timeout or self.timeout))

    def do_put_raw(self, messages, timeout=None) -> list[bytes]:
        return list(self._put(iter(messages), timeout=timeout or self.timeout))

    def do_action_raw(self, request: bytes, timeout=None) -> list[bytes]:
        return list(self._action(request, timeout=timeout or self.timeout))

    # Typed helpers.
    def get_flight_info(self, command: bytes, timeout=None) -> bytes:
        return self.get_flight_info_raw(flight_descriptor(command), timeout)

    def tickets(self, info: bytes) -> list[bytes]:
        """The tickets of a FlightInfo's endpoints."""
        return [pb_first(pb_first(endpoint, 1, b""), 1, b"") for endpoint in pb_decode(info).get(3, [])]

    def do_get(self, ticket: bytes, timeout=None) -> list[bytes]:
        return self.do_get_raw(pb_message((1, ticket)), timeout)

    def do_get_first(self, ticket: bytes, timeout: float = 15) -> bytes:
        """The first message of a DoGet stream (a subscription never ends)."""
        call = self._get(pb_message((1, ticket)), timeout=timeout)
        try:
            return next(call)
        finally:
            call.cancel()

    def query(self, sql: str, transaction_id: bytes | None = None, timeout=None) -> pa.Table:
        info = self.get_flight_info(statement_query(sql, transaction_id), timeout)
        data = []
        for ticket in self.tickets(info):
            data += self.do_get(ticket, timeout)
        return ipc_from_flight_data(data)

    def action(self, kind: str, body: bytes, timeout=None) -> list[bytes]:
        """The bodies of the results of an action."""
        results = self.do_action_raw(pb_message((1, kind), (2, body)), timeout)
        return [pb_first(r, 1, b"") for r in results]

    def put(self, command: bytes, stream: bytes | None = None, timeout=None, extra=()) -> list[bytes]:
        """DoPut of `command` with the messages of an IPC stream (or only the
        descriptor): the app_metadata of each PutResult."""
        messages = [pb_message((1, flight_descriptor(command)))]
        if stream is not None:
            parts = ipc_messages(stream)
            header, body = parts[0]
            messages = [pb_message((1, flight_descriptor(command)), (2, header), (1000, body or None))]
            messages += [pb_message((2, h), (1000, b or None)) for h, b in parts[1:]]
        messages += list(extra)
        return [pb_first(r, 1, b"") for r in self.do_put_raw(messages, timeout)]

    def update(self, sql: str, transaction_id: bytes | None = None, timeout=None) -> int:
        """CommandStatementUpdate: the rows changed."""
        [result] = self.put(statement_update(sql, transaction_id), timeout=timeout)
        return pb_first(result, 1, 0)

    def prepare(self, sql: str, transaction_id: bytes | None = None) -> bytes:
        """CreatePreparedStatement: the handle."""
        [result] = self.action("CreatePreparedStatement", create_prepared(sql, transaction_id))
        body = pb_decode(result)[2][0]  # Any.value
        return pb_first(body, 1, b"")

    def begin(self) -> bytes:
        [result] = self.action("BeginTransaction", begin_transaction())
        return pb_first(pb_decode(result)[2][0], 1, b"")

    def end(self, transaction_id: bytes, action: int, timeout=None):
        return self.action("EndTransaction", end_transaction(transaction_id, action), timeout)


# --- Internal tables, read straight from the store --------------------------------------


def internal_schema(store) -> str | None:
    """Where Quiver's internal tables live: None on SQLite; on PostgreSQL the schema
    `_quiver` when it exists, else `public`."""
    if store.kind == "sqlite":
        return None
    exists = store.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = '_quiver'")
    return "_quiver" if exists else "public"


def internal(store, table: str) -> str:
    """The qualified name of internal table `table` (e.g. `_quiver_changes`)."""
    schema = internal_schema(store)
    return table if schema is None else f"{schema}.{table}"


def store_clock(store) -> int:
    return store.scalar(f"SELECT version FROM {internal(store, '_quiver_clock')}")


def changes_of_version(store, version: int) -> list[tuple]:
    """(table_name, op, row_after as text) of the change-log entries of one commit."""
    changes, commits = internal(store, "_quiver_changes"), internal(store, "_quiver_commits")
    if store.kind == "sqlite":
        sql = f"SELECT table_name, op, row_after FROM {changes} WHERE version = {version} ORDER BY id"
    else:
        sql = (
            f"SELECT c.table_name, c.op, c.row_after::text FROM {commits} m JOIN {changes} c "
            f"ON c.txid = m.txid WHERE m.version = {version} ORDER BY c.id"
        )
    return store.rows(sql)


def change_log_state(store, tail: int = 100) -> dict:
    """What a probe must not change: the clock, the commits and changes counts and
    highest keys, and the last `tail` rows of both, verbatim."""
    changes, commits = internal(store, "_quiver_changes"), internal(store, "_quiver_commits")
    idem = internal(store, "_quiver_idempotency")
    text = "" if store.kind == "sqlite" else "::text"
    return {
        "clock": store_clock(store),
        "changes": store.rows(f"SELECT count(*), max(id) FROM {changes}"),
        "commits": store.rows(f"SELECT count(*), max(version) FROM {commits}"),
        "idempotency": store.rows(f"SELECT count(*) FROM {idem}"),
        "changes_tail": store.rows(
            f"SELECT id, table_name, op, row_key{text}, row_after{text}, row_before{text} "
            f"FROM {changes} ORDER BY id DESC LIMIT {tail}"
        ),
        "commits_tail": store.rows(
            f"SELECT version, committed_at, changes FROM {commits} ORDER BY version DESC LIMIT {tail}"
        ),
    }


# --- The server process --------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, window: float = 1.0) -> float:
    """The share of one core a process used over the next `window` seconds."""
    start, at = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - start) / (time.monotonic() - at)


class Sampler:
    """Calls `probe()` every `interval` seconds on a thread until stopped; keeps
    (time, value) samples. Use as a context manager."""

    def __init__(self, probe, interval: float):
        self.probe = probe
        self.interval = interval
        self.samples: list[tuple[float, object]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                self.samples.append((at, self.probe()))
            except Exception as error:  # noqa: BLE001 (kept and reported by the test)
                self.errors.append(error)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def values(self) -> list:
        return [value for _, value in self.samples]


def http_latency(url: str, timeout: float = 5.0) -> float:
    """Seconds a GET of `url` takes to answer 200 (on a fresh connection)."""
    import requests

    at = time.monotonic()
    response = requests.get(url, timeout=timeout)
    elapsed = time.monotonic() - at
    assert response.status_code in (200, 503), f"GET {url}: {response.status_code}"
    return elapsed


def abandoned_http_post(addr: str, path: str, body: bytes, after: float, content_type="application/json"):
    """Sends a POST and closes the connection `after` seconds later without reading
    the answer: a client that went away."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        time.sleep(after)
    finally:
        sock.close()
