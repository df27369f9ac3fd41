"""Follow filtered changes of `tasks` with quiver.v1.Subscriptions, and resume.

A first run subscribes from now on, processes a few changes and stops at a checkpoint
(`Progress.version`: every matching change up to it has been sent). More commits
happen while nobody listens. A second run resumes from the checkpoint and receives
exactly the changes after it: none lost, none twice. The script makes its own
changes through the Mutations API (gRPC modules from `quiver_stubs.py`, beside
this file).

    pip install grpcio grpcio-tools adbc-driver-flightsql pyarrow
    QUIVER_GRPC=127.0.0.1:50051 python subscribe_resume.py
"""

import os
import time
import uuid

import adbc_driver_flightsql.dbapi as flight_sql
import grpc
from adbc_driver_flightsql import DatabaseOptions

import quiver_stubs

GRPC = os.environ.get("QUIVER_GRPC", "127.0.0.1:50051")
# Every Flight SQL call gives up after 30 s instead of waiting on a stuck server.
TIMEOUTS = {
    DatabaseOptions.TIMEOUT_QUERY.value: "30",
    DatabaseOptions.TIMEOUT_FETCH.value: "30",
    DatabaseOptions.TIMEOUT_UPDATE.value: "30",
}
FILTER = "status = 'blocked' AND priority <= 2"
# Each Subscribe call ends with DEADLINE_EXCEEDED after this long: the script can
# never hang, whatever happens to the server.
TIMEOUT_S = 20

mutations_pb2, mutations_grpc = quiver_stubs.load("mutations")
subscriptions_pb2, subscriptions_grpc = quiver_stubs.load("subscriptions")
pb = mutations_pb2


def matches(status: str, priority: int) -> bool:
    """FILTER, in Python."""
    return status == "blocked" and priority <= 2


class TaskWriter:
    """Writes tasks through Mutations (one commit per call) and remembers which
    changes the subscription should deliver: (version, op, key)."""

    def __init__(self, channel, feature_id: int, prefix: str):
        self.stub = mutations_grpc.MutationsStub(channel)
        self.feature_id = feature_id
        self.prefix = prefix
        self.rows = {}  # key -> (id, status, priority)
        self.expected = []
        self.last_version = 0

    def insert(self, n: int, status: str, priority: int):
        key = f"{self.prefix}-{n}"
        now = pb.Value(timestamp_micros=time.time_ns() // 1000)
        values = {
            "feature_id": pb.Value(int64=self.feature_id),
            "key": pb.Value(string=key),
            "title": pb.Value(string=f"Example task {n}"),
            "status": pb.Value(string=status),
            "priority": pb.Value(int64=priority),
            "created_at": now,
            "updated_at": now,
        }
        request = pb.InsertRequest(table="tasks", rows=pb.Rows(rows=[pb.Row(values=values)]))
        response = self.stub.Insert(request, timeout=TIMEOUT_S)
        self.rows[key] = (response.generated_keys[0].values["id"].int64, status, priority)
        self._committed(response.commit_version, "insert", key, matches(status, priority))

    def set_status(self, n: int, status: str):
        key = f"{self.prefix}-{n}"
        task_id, old_status, priority = self.rows[key]
        request = pb.UpdateRequest(
            table="tasks",
            where=pb.Selector(keys=pb.KeyList(keys=[pb.Row(values={"id": pb.Value(int64=task_id)})])),
            set=pb.Row(values={"status": pb.Value(string=status)}),
        )
        response = self.stub.Update(request, timeout=TIMEOUT_S)
        self.rows[key] = (task_id, status, priority)
        # An update is delivered when the row matched before or after it.
        self._committed(
            response.commit_version, "update", key, matches(old_status, priority) or matches(status, priority)
        )

    def _committed(self, version: int, op: str, key: str, delivered: bool):
        self.last_version = version
        if delivered:
            self.expected.append((version, op, key))


def show(change) -> tuple:
    """Prints a ChangeEvent; answers its (version, op, key)."""
    op = subscriptions_pb2.Op.Name(change.op).removeprefix("OP_").lower()
    row = change.after if change.after.values else change.before  # a delete has only `before`
    key, status, priority = row.values["key"].string, row.values["status"].string, row.values["priority"].int64
    print(f"  v{change.version} {op} {key} {status} p{priority}")
    return (change.version, op, key)


def main():
    prefix = f"EX-SUB-{uuid.uuid4().hex[:8]}"
    conn = flight_sql.connect(f"grpc://{GRPC}", db_kwargs=TIMEOUTS, autocommit=True)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT min(id) FROM features")
        (feature_id,) = cur.fetchone()

    with grpc.insecure_channel(GRPC) as channel:
        subscriptions = subscriptions_grpc.SubscriptionsStub(channel)
        writer = TaskWriter(channel, feature_id, prefix)
        print(f"tasks written: {prefix}-*; filter: {FILTER}")

        # Run 1: changes from now on. The first Progress says the stream is live; then
        # write, and stop at the first checkpoint after two changes.
        received, checkpoint = [], None
        print("run 1 (latest):")
        call = subscriptions.Subscribe(
            subscriptions_pb2.SubscribeRequest(tables=["tasks"], filter=FILTER, latest=True), timeout=TIMEOUT_S
        )
        try:
            for response in call:
                if response.WhichOneof("event") == "change":
                    received.append(show(response.change))
                    continue
                checkpoint = response.progress.version  # store this durably in a real client
                if writer.last_version == 0:  # the first Progress: the stream is live
                    writer.insert(1, "blocked", 1)
                    writer.insert(2, "todo", 1)  # not matching: never delivered
                    writer.insert(3, "blocked", 2)
                    writer.insert(4, "blocked", 4)  # not matching
                elif len(received) >= 2:
                    break
        finally:
            call.cancel()
        print(f"run 1 stopped at checkpoint {checkpoint}")

        # Disconnected: the world goes on.
        writer.insert(5, "blocked", 1)
        writer.set_status(1, "done")  # leaves the filter: delivered, it matched before
        writer.insert(6, "review", 2)  # not matching
        writer.insert(7, "blocked", 2)
        print(f"committed up to version {writer.last_version} while disconnected")

        # Run 2: resume after the checkpoint; stop once a Progress covers the last write.
        print(f"run 2 (from_version={checkpoint}):")
        call = subscriptions.Subscribe(
            subscriptions_pb2.SubscribeRequest(tables=["tasks"], filter=FILTER, from_version=checkpoint),
            timeout=TIMEOUT_S,
        )
        try:
            for response in call:
                if response.WhichOneof("event") == "change":
                    received.append(show(response.change))
                    continue
                checkpoint = response.progress.version
                if checkpoint >= writer.last_version:
                    break
        finally:
            call.cancel()
        print(f"run 2 stopped at checkpoint {checkpoint}")

    expected = writer.expected
    lost = len([c for c in expected if c not in received])
    repeated = len(received) - len(set(received))
    print(f"{len(received)} changes received, {len(expected)} expected: {lost} lost, {repeated} repeated")
    if received != expected:
        raise SystemExit(f"expected {expected}, received {received}")


if __name__ == "__main__":
    main()
