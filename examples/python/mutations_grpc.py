"""Write rows through the quiver.v1.Mutations gRPC API with grpcio.

Shows an Insert with an idempotency key (and its safe retry), an Update by predicate,
a Delete by primary key and an Apply of several operations in one transaction. Every
call is one atomic commit and answers with the commit version it produced. The
gRPC modules are generated at run time by `quiver_stubs.py`, beside this file.

    pip install grpcio grpcio-tools
    QUIVER_GRPC=127.0.0.1:50051 python mutations_grpc.py
"""

import datetime
import os
import uuid

import grpc

import quiver_stubs

GRPC = os.environ.get("QUIVER_GRPC", "127.0.0.1:50051")
TIMEOUT_S = 30
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

pb, pb_grpc = quiver_stubs.load("mutations")


def value(v) -> "pb.Value":
    """A Python value as a typed `Value` (None is NULL; datetimes are UTC)."""
    if v is None:
        return pb.Value(null=pb.NULL_VALUE)
    if isinstance(v, bool):
        return pb.Value(bool=v)
    if isinstance(v, int):
        return pb.Value(int64=v)
    if isinstance(v, float):
        return pb.Value(double=v)
    if isinstance(v, datetime.datetime):
        return pb.Value(timestamp_micros=(v - EPOCH) // datetime.timedelta(microseconds=1))
    return pb.Value(string=str(v))


def row(**values) -> "pb.Row":
    return pb.Row(values={name: value(v) for name, v in values.items()})


def by_id(*ids: int) -> "pb.Selector":
    """Rows chosen by primary key."""
    return pb.Selector(keys=pb.KeyList(keys=[row(id=i) for i in ids]))


def ids(response) -> list[int]:
    """The generated primary keys (`id`) of a response, in row order."""
    return [key.values["id"].int64 for key in response.generated_keys]


def main():
    run = uuid.uuid4().hex[:8]  # keeps keys unique, so the example can be re-run
    now = datetime.datetime.now(datetime.timezone.utc)
    keys = [f"EX-{run}-{n}" for n in (1, 2, 3)]
    epics = [
        row(key=key, title=f"Example epic {n}", status="planned", priority=n, created_at=now, updated_at=now)
        for n, key in enumerate(keys, start=1)
    ]

    with grpc.insecure_channel(GRPC) as channel:
        stub = pb_grpc.MutationsStub(channel)
        print(f"epic keys: {' '.join(keys)}")

        # Insert three epics. The idempotency key makes the call safe to retry.
        insert = pb.InsertRequest(
            table="epics",
            rows=pb.Rows(rows=epics),
            idempotency_key=f"example-insert-{run}",
        )
        first = stub.Insert(insert, timeout=TIMEOUT_S)
        print(f"insert: commit_version={first.commit_version} ids={ids(first)} replayed={first.replayed}")

        # A retry (say, after a timeout) gets the first call's answer and writes nothing.
        retry = stub.Insert(insert, timeout=TIMEOUT_S)
        print(f"retry:  commit_version={retry.commit_version} ids={ids(retry)} replayed={retry.replayed}")
        epic1, epic2, epic3 = ids(first)

        # Update by predicate: a SQL condition over the table's columns.
        in_keys = ", ".join(f"'{key}'" for key in keys)
        update = stub.Update(
            pb.UpdateRequest(
                table="epics",
                where=pb.Selector(predicate=f"key IN ({in_keys}) AND priority <= 2"),
                set=row(status="active"),
            ),
            timeout=TIMEOUT_S,
        )
        print(f"update: commit_version={update.commit_version} affected_rows={update.affected_rows}")

        # Delete by primary key.
        delete = stub.Delete(pb.DeleteRequest(table="epics", where=by_id(epic3)), timeout=TIMEOUT_S)
        print(f"delete: commit_version={delete.commit_version} affected_rows={delete.affected_rows}")

        # Apply: several operations, in order, in one transaction (all or nothing):
        # add a feature to epic 1 and close it, and drop epic 2.
        feature = row(
            epic_id=epic1,
            key=f"EX-{run}-F1",
            title="Example feature",
            status="active",
            priority=1,
            created_at=now,
            updated_at=now,
        )
        operations = [
            pb.Operation(insert=pb.InsertRequest(table="features", rows=pb.Rows(rows=[feature]))),
            pb.Operation(update=pb.UpdateRequest(table="epics", where=by_id(epic1), set=row(status="done"))),
            pb.Operation(delete=pb.DeleteRequest(table="epics", where=by_id(epic2))),
        ]
        apply = stub.Apply(
            pb.ApplyRequest(operations=operations, idempotency_key=f"example-apply-{run}"), timeout=TIMEOUT_S
        )
        print(
            f"apply:  commit_version={apply.commit_version} affected_rows={apply.affected_rows} "
            f"results={[r.affected_rows for r in apply.results]} feature_id={ids(apply)[0]}"
        )

    if not (retry.replayed and retry.commit_version == first.commit_version and ids(retry) == ids(first)):
        raise SystemExit("the retry was not answered with the first call's response")


if __name__ == "__main__":
    main()
