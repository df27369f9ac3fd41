"""A live count of tasks per status, kept from an Arrow Flight change stream.

The Flight `subscribe` action takes a JSON request and answers a ticket; `DoGet` on
the ticket streams record batches: with `snapshot`, first the current rows, then every
change after them (`_version`, `_op` and the projected columns). Applying each row by
its key keeps an exact copy, from which the aggregate is computed. The script makes a
few changes itself (through Flight SQL) and watches the counts follow.

    pip install adbc-driver-flightsql pyarrow
    QUIVER_GRPC=127.0.0.1:50051 python flight_live_aggregate.py
"""

import collections
import json
import os
import uuid

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow.flight as flight
from adbc_driver_flightsql import DatabaseOptions

GRPC = os.environ.get("QUIVER_GRPC", "127.0.0.1:50051")
# Every Flight SQL call gives up after 30 s instead of waiting on a stuck server.
TIMEOUTS = {
    DatabaseOptions.TIMEOUT_QUERY.value: "30",
    DatabaseOptions.TIMEOUT_FETCH.value: "30",
    DatabaseOptions.TIMEOUT_UPDATE.value: "30",
}
# The stream ends with a timeout error after this long: the script can never hang.
TIMEOUT_S = 30


class LiveStatusCounts:
    """Task id -> status, kept current from snapshot rows and changes."""

    def __init__(self):
        self.status_of = {}

    def apply(self, batch):
        for op, task_id, status in zip(*(batch.column(c).to_pylist() for c in ("_op", "id", "status"))):
            if op in ("snapshot", "insert", "update"):
                self.status_of[task_id] = status
            elif op == "delete":
                self.status_of.pop(task_id, None)
            elif op == "truncate":
                self.status_of.clear()

    def counts(self) -> dict:
        return dict(sorted(collections.Counter(self.status_of.values()).items()))


def changes_by_version(batch) -> str:
    ops = collections.Counter(zip(batch.column("_version").to_pylist(), batch.column("_op").to_pylist()))
    return ", ".join(f"v{version} {op} x{n}" for (version, op), n in sorted(ops.items()))


def make_changes(cur) -> dict:
    """Moves 5 tasks from review to done, adds a blocked task and deletes a todo task
    (each statement its own commit); answers how each status's count changes."""
    cur.execute(
        "UPDATE tasks SET status = 'done', completed_at = updated_at "
        "WHERE id IN (SELECT id FROM tasks WHERE status = 'review' ORDER BY id LIMIT 5)"
    )
    moved = cur.rowcount
    cur.execute(
        "INSERT INTO tasks (feature_id, key, title, status, priority, created_at, updated_at) "
        f"SELECT min(id), 'EX-LIVE-{uuid.uuid4().hex[:8]}', 'Live example', 'blocked', 1, "
        "'2025-06-01 09:00:00', '2025-06-01 09:00:00' FROM features"
    )
    cur.execute("DELETE FROM tasks WHERE id = (SELECT min(id) FROM tasks WHERE status = 'todo')")
    deleted = cur.rowcount
    return {"review": -moved, "done": moved, "blocked": 1, "todo": -deleted}


def main():
    client = flight.FlightClient(f"grpc://{GRPC}")
    options = flight.FlightCallOptions(timeout=TIMEOUT_S)
    request = {"table": "tasks", "snapshot": True, "columns": ["id", "status"]}
    [ticket] = client.do_action(flight.Action("subscribe", json.dumps(request).encode()), options)
    reader = client.do_get(flight.Ticket(ticket.body.to_pybytes()), options)

    live = LiveStatusCounts()
    try:
        conn = flight_sql.connect(f"grpc://{GRPC}", db_kwargs=TIMEOUTS, autocommit=True)
        with conn, conn.cursor() as cur:
            # The snapshot: rows, then the first batch of no rows (a checkpoint).
            while True:
                chunk = reader.read_chunk()
                live.apply(chunk.data)
                if chunk.data.num_rows == 0:
                    break
            checkpoint = json.loads(chunk.app_metadata.to_pybytes())["version"]
            before = live.counts()
            print(f"snapshot at version {checkpoint}: {len(live.status_of)} tasks {before}")

            delta = make_changes(cur)
            expected = {s: before.get(s, 0) + delta.get(s, 0) for s in before.keys() | delta.keys()}
            expected = dict(sorted((s, n) for s, n in expected.items() if n))

            # Changes arrive as batches; each delivery ends with a checkpoint. Read until
            # our changes are in (nothing else writes here).
            while live.counts() != expected:
                chunk = reader.read_chunk()
                if chunk.data.num_rows:
                    live.apply(chunk.data)
                    print(f"  {changes_by_version(chunk.data)}")
            print(f"live counts: {live.counts()}")

            # The live view agrees with the table.
            cur.execute("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")
            queried = dict(cur.fetchall())
    finally:
        reader.cancel()
        client.close()
    print(f"matches SELECT status, count(*): {queried == live.counts()}")
    if queried != live.counts():
        raise SystemExit(f"the table says {queried}")

if __name__ == "__main__":
    main()
