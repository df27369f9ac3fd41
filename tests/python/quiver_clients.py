"""Client helpers shared by the gRPC tests: a thin Mutations client, a tasks row
builder, and a Subscriptions stream reader that reads in a background thread."""

import datetime
import json
import threading
import time

import grpc
import pytest

T0 = datetime.datetime(2025, 6, 1, 9, 30, 0)
EPOCH = datetime.datetime(1970, 1, 1)


def micros(moment: datetime.datetime) -> int:
    """Microseconds since the Unix epoch of a naive UTC datetime."""
    return (moment - EPOCH) // datetime.timedelta(microseconds=1)


def from_micros(value: int) -> datetime.datetime:
    """The naive UTC datetime of microseconds since the Unix epoch."""
    return EPOCH + datetime.timedelta(microseconds=value)


# --- Mutations ------------------------------------------------------------------------


class Mutations:
    """A thin client: Python values to typed `Value`s, one method per RPC."""

    def __init__(self, pb, stub):
        self.pb = pb
        self.stub = stub

    def value(self, v):
        pb = self.pb
        if v is None:
            return pb.Value(null=pb.NULL_VALUE)
        if isinstance(v, bool):
            return pb.Value(bool=v)
        if isinstance(v, int):
            return pb.Value(int64=v)
        if isinstance(v, float):
            return pb.Value(double=v)
        if isinstance(v, str):
            return pb.Value(string=v)
        if isinstance(v, bytes):
            return pb.Value(bytes=v)
        if isinstance(v, datetime.datetime):
            return pb.Value(timestamp_micros=micros(v))
        raise TypeError(f"no Value for {v!r}")

    def row(self, values: dict):
        return self.pb.Row(values={k: self.value(v) for k, v in values.items()})

    def rows(self, rows: list[dict]):
        return self.pb.Rows(rows=[self.row(r) for r in rows])

    def keys(self, keys: list[dict]):
        return self.pb.Selector(keys=self.pb.KeyList(keys=[self.row(k) for k in keys]))

    def predicate(self, sql: str):
        return self.pb.Selector(predicate=sql)

    # Requests (for Apply and for sending twice).
    def insert_request(self, table, rows, idempotency_key=""):
        rows = rows if isinstance(rows, self.pb.Rows) else self.rows(rows)
        return self.pb.InsertRequest(table=table, rows=rows, idempotency_key=idempotency_key)

    def update_request(self, table, where, set_values, idempotency_key=""):
        return self.pb.UpdateRequest(
            table=table, where=where, set=self.row(set_values), idempotency_key=idempotency_key
        )

    def delete_request(self, table, where, idempotency_key=""):
        return self.pb.DeleteRequest(table=table, where=where, idempotency_key=idempotency_key)

    def upsert_request(self, table, rows, idempotency_key=""):
        return self.pb.UpsertRequest(table=table, rows=self.rows(rows), idempotency_key=idempotency_key)

    # Calls.
    def insert(self, table, rows, idempotency_key="", **kwargs):
        return self.stub.Insert(self.insert_request(table, rows, idempotency_key), timeout=60, **kwargs)

    def update(self, table, where, set_values, idempotency_key="", **kwargs):
        return self.stub.Update(
            self.update_request(table, where, set_values, idempotency_key), timeout=60, **kwargs
        )

    def delete(self, table, where, idempotency_key="", **kwargs):
        return self.stub.Delete(self.delete_request(table, where, idempotency_key), timeout=60, **kwargs)

    def upsert(self, table, rows, idempotency_key="", **kwargs):
        return self.stub.Upsert(self.upsert_request(table, rows, idempotency_key), timeout=60, **kwargs)

    def apply(self, operations, idempotency_key="", **kwargs):
        ops = []
        for op in operations:
            kind = {
                "InsertRequest": "insert",
                "UpdateRequest": "update",
                "DeleteRequest": "delete",
                "UpsertRequest": "upsert",
            }[type(op).__name__]
            ops.append(self.pb.Operation(**{kind: op}))
        return self.stub.Apply(
            self.pb.ApplyRequest(operations=ops, idempotency_key=idempotency_key), timeout=60, **kwargs
        )


def connect_mutations(addr: str, quiver_pb) -> tuple["Mutations", grpc.Channel]:
    """A Mutations client on a fresh channel to `addr` (host:port); close the channel."""
    pb2, pb2_grpc = quiver_pb
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    return Mutations(pb2, pb2_grpc.MutationsStub(channel)), channel


def rpc_error(code, call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)
    error = raised.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    return error


def some_feature(store) -> int:
    """A feature no test deletes (the cascade test takes the last one)."""
    return store.scalar("SELECT min(id) FROM features")


def task(key: str, feature_id: int, **overrides) -> dict:
    """A tasks row with every NOT NULL column (id left to the store)."""
    row = {
        "feature_id": feature_id,
        "key": key,
        "title": f"title of {key}",
        "status": "todo",
        "priority": 3,
        "created_at": T0,
        "updated_at": T0,
    }
    row.update(overrides)
    return row


def clock(store) -> int:
    """The store's latest commit version (the change log's clock row)."""
    return store.scalar("SELECT version FROM _quiver_clock")


# --- Subscriptions --------------------------------------------------------------------

OP_NAMES = {1: "insert", 2: "update", 3: "delete", 4: "truncate", 5: "snapshot"}
TIMESTAMP_COLUMNS = {"created_at", "updated_at", "completed_at", "changed_at"}


def pb_value(value):
    """A typed `quiver.v1.Value` as a Python value (timestamps as naive UTC datetimes)."""
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null":
        return None
    if kind == "timestamp_micros":
        return from_micros(value.timestamp_micros)
    if kind == "date_days":
        return datetime.date(1970, 1, 1) + datetime.timedelta(days=value.date_days)
    return getattr(value, kind)


def pb_row(row) -> dict:
    return {name: pb_value(v) for name, v in row.values.items()}


def pb_kinds(row) -> dict:
    """Column name to the `Value` oneof set (None when unset)."""
    return {name: v.WhichOneof("kind") for name, v in row.values.items()}


def json_row(text) -> dict | None:
    """A row image of the change log (JSON text) as a Python dict comparable with
    `pb_row`: timestamp columns become naive datetimes."""
    if text is None:
        return None
    row = json.loads(text) if isinstance(text, str) else dict(text)
    for name in TIMESTAMP_COLUMNS & row.keys():
        if isinstance(row[name], str):
            row[name] = datetime.datetime.fromisoformat(row[name]).replace(tzinfo=None)
    return row


def change_tuple(event) -> tuple:
    """A ChangeEvent in the comparable form of `change_log` entries."""
    return (
        event.version,
        event.committed_at_micros,
        event.table,
        OP_NAMES.get(event.op, f"op {event.op}"),
        pb_row(event.key) if event.key.values else None,
        pb_row(event.after) if event.after.values else None,
        pb_row(event.before) if event.before.values else None,
    )


def change_log(store, after_version: int = 0, tables=("tasks",), upto_version: int | None = None) -> list[tuple]:
    """The change log read directly from the store, in the form of `change_tuple`:
    (version, committed_at_micros, table, op, key, after, before), in version order
    and, within a commit, in the order made."""
    names = ", ".join(f"'{t}'" for t in tables)
    upto = "" if upto_version is None else f" AND {{v}} <= {upto_version}"
    if store.kind == "sqlite":
        sql = (
            "SELECT c.version, m.committed_at, c.table_name, c.op, c.row_key, c.row_after, c.row_before "
            "FROM _quiver_changes c JOIN _quiver_commits m ON m.version = c.version "
            f"WHERE c.version > {after_version} AND c.table_name IN ({names})"
            + upto.format(v="c.version")
            + " ORDER BY c.version, c.id"
        )
    else:
        sql = (
            "SELECT m.version, m.committed_at, c.table_name, c.op, c.row_key::text, c.row_after::text, "
            "c.row_before::text FROM _quiver_commits m JOIN _quiver_changes c ON c.txid = m.txid "
            f"WHERE m.version > {after_version} AND c.table_name IN ({names})"
            + upto.format(v="m.version")
            + " ORDER BY m.version, c.id"
        )
    return [
        (version, committed_at, table, op, json_row(key), json_row(after), json_row(before))
        for version, committed_at, table, op, key, after, before in store.rows(sql)
    ]


def commit_versions(store, after_version: int, upto_version: int | None = None) -> list[int]:
    """Versions of `_quiver_commits` above `after_version`, ascending."""
    upto = "" if upto_version is None else f" AND version <= {upto_version}"
    return [
        row[0]
        for row in store.rows(
            f"SELECT version FROM _quiver_commits WHERE version > {after_version}{upto} ORDER BY version"
        )
    ]


def checkpoint_of(responses, start: int = 0) -> int:
    """The version a client may resume from after reading `responses`: the last
    Progress.version, or the version just below the last change received (a commit's
    changes are sent together and versions come in order, so every change of a
    lower version has been received), whichever is higher."""
    point = start
    for response in responses:
        kind = response.WhichOneof("event")
        if kind == "progress":
            point = max(point, response.progress.version)
        elif kind == "change" and response.change.op != 5:
            point = max(point, response.change.version - 1)
    return point


def check_stream_invariants(responses):
    """What every stream must satisfy: change versions never go down, Progress never
    goes down, no change (other than a snapshot row) arrives at or below a Progress
    already sent, and latest_version >= version."""
    last_change = 0
    last_progress = 0
    for i, response in enumerate(responses):
        kind = response.WhichOneof("event")
        assert kind in ("change", "progress"), f"response {i} has no event: {response}"
        if kind == "change":
            change = response.change
            assert change.version >= last_change, f"response {i}: version {change.version} after {last_change}"
            if change.op != 5:
                assert change.version > last_progress, (
                    f"response {i}: change at version {change.version} after Progress {last_progress}"
                )
            last_change = change.version
        else:
            progress = response.progress
            assert progress.version >= last_progress, (
                f"response {i}: Progress {progress.version} after Progress {last_progress}"
            )
            assert progress.latest_version >= progress.version, f"response {i}: {progress}"
            last_progress = progress.version


class Subscription:
    """A Subscribe call whose responses a background thread collects, with their
    arrival times. `start=False` opens the call without reading it (a slow client);
    `read()` starts reading later."""

    def __init__(self, stub, request, *, timeout: float = 120, start: bool = True, metadata=None):
        self.request = request
        self.call = stub.Subscribe(request, timeout=timeout, metadata=metadata)
        self.responses = []
        self.arrivals = []
        self.error = None
        self.done = False
        self.cancelled = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if start:
            self._thread.start()

    def read(self):
        self._thread.start()

    def _read(self):
        try:
            for response in self.call:
                with self._cond:
                    self.responses.append(response)
                    self.arrivals.append(time.monotonic())
                    self._cond.notify_all()
        except grpc.RpcError as error:
            with self._cond:
                self.error = error
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    # Views (copies, safe while the thread appends).
    def snapshot(self) -> list:
        with self._cond:
            return list(self.responses)

    @property
    def changes(self) -> list:
        return [r.change for r in self.snapshot() if r.WhichOneof("event") == "change"]

    @property
    def progresses(self) -> list:
        return [r.progress for r in self.snapshot() if r.WhichOneof("event") == "progress"]

    def arrival_of(self, version: int) -> float | None:
        """When the first change of `version` arrived (time.monotonic())."""
        with self._cond:
            for response, at in zip(self.responses, self.arrivals):
                if response.WhichOneof("event") == "change" and response.change.version == version:
                    return at
        return None

    def progress_version(self) -> int:
        progresses = self.progresses
        return progresses[-1].version if progresses else -1

    def describe(self) -> str:
        responses = self.snapshot()
        changes = [r.change for r in responses if r.WhichOneof("event") == "change"]
        progresses = [r.progress for r in responses if r.WhichOneof("event") == "progress"]
        error = "" if self.error is None else f"; error {self.error.code()}: {self.error.details()}"
        return (
            f"{len(changes)} changes (last version {changes[-1].version if changes else None}), "
            f"{len(progresses)} progress (last {progresses[-1] if progresses else None})".replace("\n", " ")
            + f", done={self.done}{error}"
        )

    def wait(self, condition, what: str, timeout: float = 30):
        """Waits until `condition(self)` holds; fails on timeout or if the stream ends."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self):
                if self.done:
                    raise AssertionError(f"the stream ended before {what}: {self.describe()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.describe()}")
                self._cond.wait(min(remaining, 0.5))

    def wait_progress(self, version: int, timeout: float = 30):
        """Waits for a Progress at or above `version` (every change up to it sent)."""
        self.wait(lambda s: s.progress_version() >= version, f"Progress >= {version}", timeout)

    def wait_changes(self, count: int, timeout: float = 30):
        self.wait(lambda s: len(s.changes) >= count, f"{count} changes", timeout)

    def wait_error(self, timeout: float = 30) -> grpc.RpcError:
        self.wait(lambda s: s.done, "the stream to end", timeout)
        assert self.error is not None, f"the stream ended without an error: {self.describe()}"
        return self.error

    def cancel(self):
        self.cancelled = True
        self.call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
            assert not self._thread.is_alive(), "the reader thread ends after cancel"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


def subscribe_error(stub, request, code) -> grpc.RpcError:
    """The error a Subscribe call must fail with when its stream starts."""
    call = stub.Subscribe(request, timeout=20)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            first = next(call)
            pytest.fail(f"expected {code}, the stream started with {first}")
    finally:
        call.cancel()
    error = raised.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    return error


class Subscriptions:
    """A thin Subscriptions client: builds requests and opens `Subscription`s."""

    def __init__(self, pb, stub):
        self.pb = pb
        self.stub = stub

    def request(self, tables=("tasks",), filter="", columns=(), *, from_version=None, latest=None, snapshot=None):
        start = {}
        if from_version is not None:
            start["from_version"] = from_version
        if latest is not None:
            start["latest"] = latest
        if snapshot is not None:
            start["snapshot"] = snapshot
        request = self.pb.SubscribeRequest(tables=list(tables), filter=filter, columns=list(columns), **start)
        if from_version is not None:
            assert request.WhichOneof("start") == "from_version"
        return request

    def open(self, tables=("tasks",), filter="", columns=(), *, timeout=120, start=True, metadata=None, **where):
        return Subscription(
            self.stub, self.request(tables, filter, columns, **where), timeout=timeout, start=start, metadata=metadata
        )


def connect_subscriptions(addr: str, subscriptions_pb) -> tuple["Subscriptions", grpc.Channel]:
    """A Subscriptions client on a fresh channel to `addr` (host:port); close the channel."""
    pb2, pb2_grpc = subscriptions_pb
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    return Subscriptions(pb2, pb2_grpc.SubscriptionsStub(channel)), channel


def merge_runs(runs) -> list[tuple]:
    """The union of the changes of several streams of one subscription, each resumed
    from a checkpoint: `runs` holds (from_version, [change tuples]). A change is known
    by (version, its position among the changes of that version in its stream): every
    stream receives a commit's changes from its first, so the same position is the
    same change. Re-delivered changes must be identical; the union is in order."""
    merged = {}
    for start, changes in runs:
        positions = {}
        for change in changes:
            version = change[0]
            assert version > start, f"a stream from {start} delivered version {version}"
            position = positions.get(version, 0)
            positions[version] = position + 1
            key = (version, position)
            if key in merged:
                assert merged[key] == change, f"re-delivered {key} differs: {merged[key]} vs {change}"
            else:
                merged[key] = change
    return [merged[key] for key in sorted(merged)]


def arrow_of(conn, sql: str):
    """Runs `sql` on an ADBC connection: the result as a pyarrow Table."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return cur.fetch_arrow_table()
    finally:
        cur.close()
