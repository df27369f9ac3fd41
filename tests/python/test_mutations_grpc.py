"""The gRPC Mutations API (quiver.v1.Mutations) from a grpcio client, against a server
of this module's own; the truth is the server's database read directly (`store`)."""

import datetime
import io

import grpc
import pyarrow as pa

from quiver_clients import T0, clock, rpc_error, some_feature, task

DEFAULT_MAX_MUTATION_ROWS = 100_000


def ts(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


TASK_COLUMNS = (
    "feature_id, key, title, description, status, priority, agent_type, estimate_hours, "
    "created_at, updated_at, completed_at"
)


def insert_one(mutations, store, key, **overrides) -> int:
    """Inserts one task and answers its generated id."""
    response = mutations.insert("tasks", [task(key, some_feature(store), **overrides)])
    assert response.affected_rows == 1
    return response.generated_keys[0].values["id"].int64


# --- insert ---------------------------------------------------------------------------


def test_insert_returns_the_generated_key_and_the_row_is_in_the_store(mutations, store):
    feature = some_feature(store)
    max_id_before = store.scalar("SELECT max(id) FROM tasks")
    tasks_before = store.count("tasks")
    row = task(
        "GRPC-INSERT-1",
        feature,
        title="Write the gRPC client tests",
        description=None,
        status="in_progress",
        priority=2,
        agent_type="tester",
        estimate_hours=2.5,
        updated_at=T0 + datetime.timedelta(hours=1),
    )
    response = mutations.insert("tasks", [row])

    assert response.commit_version > 0
    assert not response.replayed
    assert response.affected_rows == 1
    assert [r.affected_rows for r in response.results] == [1]
    assert len(response.generated_keys) == 1
    assert list(response.results[0].generated_keys) == list(response.generated_keys)
    key = response.generated_keys[0]
    assert set(key.values) == {"id"}
    assert key.values["id"].WhichOneof("kind") == "int64"
    new_id = key.values["id"].int64
    assert new_id > max_id_before

    assert store.count("tasks") == tasks_before + 1
    assert store.scalar("SELECT id FROM tasks WHERE key = 'GRPC-INSERT-1'") == new_id
    assert store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {new_id}") == [
        (
            feature,
            "GRPC-INSERT-1",
            "Write the gRPC client tests",
            None,
            "in_progress",
            2,
            "tester",
            2.5,
            ts(T0),
            ts(T0 + datetime.timedelta(hours=1)),
            None,
        )
    ]


def test_a_schema_qualified_table_name(mutations, store, writable_server):
    response = mutations.insert(
        f"{writable_server.schema}.tasks", [task("GRPC-QUALIFIED", some_feature(store))]
    )
    assert response.affected_rows == 1
    assert store.scalar("SELECT id FROM tasks WHERE key = 'GRPC-QUALIFIED'") == (
        response.generated_keys[0].values["id"].int64
    )


def test_insert_several_rows_answers_keys_in_row_order(mutations, store):
    feature = some_feature(store)
    keys = [f"GRPC-MULTI-{i}" for i in range(5)]
    response = mutations.insert("tasks", [task(k, feature, priority=1 + i) for i, k in enumerate(keys)])
    assert response.affected_rows == 5
    ids = [k.values["id"].int64 for k in response.generated_keys]
    truth = dict(store.rows("SELECT key, id FROM tasks WHERE key LIKE 'GRPC-MULTI-%'"))
    assert ids == [truth[k] for k in keys]
    assert len(set(ids)) == 5


# --- update ---------------------------------------------------------------------------


def test_update_by_key(mutations, store):
    new_id = insert_one(mutations, store, "GRPC-UPDATE-KEY", agent_type="coder")
    before = store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {new_id}")[0]
    later = T0 + datetime.timedelta(days=2)
    response = mutations.update(
        "tasks",
        mutations.keys([{"id": new_id}]),
        {"status": "done", "priority": 5, "completed_at": later, "agent_type": None},
    )
    assert response.affected_rows == 1
    assert [r.affected_rows for r in response.results] == [1]
    assert response.commit_version > 0
    after = store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {new_id}")[0]
    # status, priority, agent_type, completed_at changed; every other column kept its value.
    expected = list(before)
    expected[4], expected[5], expected[6], expected[10] = "done", 5, None, ts(later)
    assert after == tuple(expected)


def test_update_by_predicate_touches_exactly_the_matching_rows(mutations, store):
    predicate = "status = 'blocked' AND priority <= 2"
    matching = store.rows(f"SELECT id FROM tasks WHERE {predicate} ORDER BY id")
    assert matching, "the demo has blocked tasks of priority 1 or 2"
    assert store.count("tasks", "agent_type = 'grpc-predicate'") == 0

    response = mutations.update("tasks", mutations.predicate(predicate), {"agent_type": "grpc-predicate"})
    assert response.affected_rows == len(matching)
    assert store.rows("SELECT id FROM tasks WHERE agent_type = 'grpc-predicate' ORDER BY id") == matching


def test_update_matching_nothing_affects_no_rows(mutations, store):
    assert store.count("tasks", "key = 'GRPC-NO-SUCH-TASK'") == 0
    response = mutations.update("tasks", mutations.predicate("key = 'GRPC-NO-SUCH-TASK'"), {"priority": 1})
    assert response.affected_rows == 0
    assert response.commit_version == clock(store)


# --- delete ---------------------------------------------------------------------------


def test_delete_by_key(mutations, store):
    new_id = insert_one(mutations, store, "GRPC-DELETE-KEY")
    tasks_before = store.count("tasks")
    response = mutations.delete("tasks", mutations.keys([{"id": new_id}]))
    assert response.affected_rows == 1
    assert store.count("tasks", f"id = {new_id}") == 0
    assert store.count("tasks") == tasks_before - 1

    # Deleting it again finds nothing, commits nothing, and answers the latest version.
    again = mutations.delete("tasks", mutations.keys([{"id": new_id}]))
    assert again.affected_rows == 0
    assert again.commit_version == response.commit_version == clock(store)


def test_deleting_a_feature_cascades_to_its_tasks_and_their_history(mutations, store):
    feature = store.scalar("SELECT max(id) FROM features")
    its_tasks = store.count("tasks", f"feature_id = {feature}")
    its_history = store.count(
        "task_history", f"task_id IN (SELECT id FROM tasks WHERE feature_id = {feature})"
    )
    assert its_tasks > 0
    features_before, tasks_before, history_before = (
        store.count("features"),
        store.count("tasks"),
        store.count("task_history"),
    )

    response = mutations.delete("features", mutations.keys([{"id": feature}]))
    # Cascaded rows are not counted in affected_rows: only the feature itself.
    assert response.affected_rows == 1
    assert store.count("features", f"id = {feature}") == 0
    assert store.count("tasks", f"feature_id = {feature}") == 0
    assert store.count("features") == features_before - 1
    assert store.count("tasks") == tasks_before - its_tasks
    assert store.count("task_history") == history_before - its_history
    assert store.count("task_history", "task_id NOT IN (SELECT id FROM tasks)") == 0


# --- upsert ---------------------------------------------------------------------------


def test_upsert_inserts_then_updates(mutations, store):
    feature = some_feature(store)
    task_id = 900_000_001  # far above every generated id
    assert store.count("tasks", f"id = {task_id}") == 0

    first = mutations.upsert("tasks", [dict(task("GRPC-UPSERT", feature), id=task_id)])
    assert first.affected_rows == 1
    assert [k.values["id"].int64 for k in first.generated_keys] == [task_id]
    assert store.rows(f"SELECT key, title, status, priority FROM tasks WHERE id = {task_id}") == [
        ("GRPC-UPSERT", "title of GRPC-UPSERT", "todo", 3)
    ]

    second = mutations.upsert(
        "tasks",
        [dict(task("GRPC-UPSERT", feature, title="upserted again", status="review", priority=4), id=task_id)],
    )
    assert second.affected_rows == 1
    assert second.commit_version > first.commit_version
    assert store.rows(f"SELECT key, title, status, priority FROM tasks WHERE id = {task_id}") == [
        ("GRPC-UPSERT", "upserted again", "review", 4)
    ]
    assert store.count("tasks", "key = 'GRPC-UPSERT'") == 1


# --- apply ----------------------------------------------------------------------------


def test_apply_runs_every_operation_in_one_commit(mutations, store):
    feature = some_feature(store)
    doomed = insert_one(mutations, store, "GRPC-APPLY-DOOMED")
    tasks_before = store.count("tasks")

    response = mutations.apply(
        [
            mutations.insert_request("tasks", [task("GRPC-APPLY-NEW", feature)]),
            mutations.update_request(
                "tasks", mutations.predicate("key = 'GRPC-APPLY-NEW'"), {"status": "blocked"}
            ),
            mutations.delete_request("tasks", mutations.keys([{"id": doomed}])),
        ]
    )
    assert [r.affected_rows for r in response.results] == [1, 1, 1]
    assert response.affected_rows == 3
    assert len(response.generated_keys) == 1
    new_id = response.generated_keys[0].values["id"].int64
    assert list(response.results[0].generated_keys) == list(response.generated_keys)
    assert not response.results[1].generated_keys and not response.results[2].generated_keys

    assert store.rows("SELECT id, status FROM tasks WHERE key = 'GRPC-APPLY-NEW'") == [(new_id, "blocked")]
    assert store.count("tasks", f"id = {doomed}") == 0
    assert store.count("tasks") == tasks_before
    # One commit holds the three changes.
    assert response.commit_version == clock(store)
    assert store.rows(f"SELECT changes FROM _quiver_commits WHERE version = {response.commit_version}") == [(3,)]


def test_apply_whose_last_operation_violates_a_check_changes_nothing(mutations, store):
    feature = some_feature(store)
    existing = insert_one(mutations, store, "GRPC-APPLY-KEPT")
    kept_row = store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {existing}")
    tasks_before = store.count("tasks")
    version_before = clock(store)

    error = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        mutations.apply,
        [
            mutations.insert_request("tasks", [task("GRPC-APPLY-ROLLED-BACK", feature)]),
            mutations.update_request("tasks", mutations.keys([{"id": existing}]), {"title": "changed"}),
            mutations.delete_request("tasks", mutations.keys([{"id": existing}])),
            mutations.insert_request("tasks", [task("GRPC-APPLY-BAD-PRIORITY", feature, priority=9)]),
        ],
    )
    assert "priority" in error.details().lower()

    assert store.count("tasks", "key IN ('GRPC-APPLY-ROLLED-BACK', 'GRPC-APPLY-BAD-PRIORITY')") == 0
    assert store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {existing}") == kept_row
    assert store.count("tasks") == tasks_before
    assert clock(store) == version_before


def test_commit_versions_strictly_grow(mutations, store):
    versions = [clock(store)]
    new_id = insert_one(mutations, store, "GRPC-VERSIONS")
    versions.append(clock(store))
    feature = some_feature(store)
    calls = [
        lambda: mutations.update("tasks", mutations.keys([{"id": new_id}]), {"priority": 1}),
        lambda: mutations.update("tasks", mutations.keys([{"id": new_id}]), {"priority": 2}),
        lambda: mutations.upsert("tasks", [dict(task("GRPC-VERSIONS", feature), id=new_id)]),
        lambda: mutations.delete("tasks", mutations.keys([{"id": new_id}])),
    ]
    for call in calls:
        response = call()
        assert response.affected_rows == 1
        assert response.commit_version == clock(store)
        versions.append(response.commit_version)
    assert all(a < b for a, b in zip(versions, versions[1:])), versions


# --- errors ---------------------------------------------------------------------------


def test_a_value_of_the_wrong_type_is_invalid_argument_naming_the_column(mutations, store):
    feature = some_feature(store)
    tasks_before, version_before = store.count("tasks"), clock(store)
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        mutations.insert,
        "tasks",
        [task("GRPC-TYPE-OK", feature), task("GRPC-TYPE-BAD", feature, priority="high")],
    )
    assert "priority" in error.details()
    assert store.count("tasks", "key IN ('GRPC-TYPE-OK', 'GRPC-TYPE-BAD')") == 0
    assert store.count("tasks") == tasks_before
    assert clock(store) == version_before

    # In an update's new values too.
    existing = store.scalar("SELECT min(id) FROM tasks")
    row_before = store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {existing}")
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        mutations.update,
        "tasks",
        mutations.keys([{"id": existing}]),
        {"title": "retitled", "priority": "urgent"},
    )
    assert "priority" in error.details()
    assert store.rows(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = {existing}") == row_before
    assert clock(store) == version_before


def test_an_unknown_table_is_not_found(mutations, store):
    version_before = clock(store)
    error = rpc_error(grpc.StatusCode.NOT_FOUND, mutations.insert, "no_such_table", [{"id": 1}])
    assert "no_such_table" in error.details()
    rpc_error(grpc.StatusCode.NOT_FOUND, mutations.delete, "no_such_table", mutations.predicate("id = 1"))
    assert clock(store) == version_before


def test_an_unknown_column_is_invalid_argument(mutations, store):
    feature = some_feature(store)
    tasks_before = store.count("tasks")
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        mutations.insert,
        "tasks",
        [task("GRPC-UNKNOWN-COLUMN", feature, no_such_column=1)],
    )
    assert "no_such_column" in error.details()
    assert store.count("tasks") == tasks_before

    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        mutations.update,
        "tasks",
        mutations.predicate("no_such_column = 1"),
        {"priority": 1},
    )
    assert "no_such_column" in error.details()


def test_a_duplicate_key_is_already_exists(mutations, store):
    feature = some_feature(store)
    existing_id, existing_key = store.rows("SELECT id, key FROM tasks ORDER BY id LIMIT 1")[0]
    tasks_before, version_before = store.count("tasks"), clock(store)

    # The UNIQUE key column.
    rpc_error(grpc.StatusCode.ALREADY_EXISTS, mutations.insert, "tasks", [task(existing_key, feature)])
    # The primary key, in the second row of a request whose first row is fine.
    rpc_error(
        grpc.StatusCode.ALREADY_EXISTS,
        mutations.insert,
        "tasks",
        [task("GRPC-DUP-FIRST", feature), dict(task("GRPC-DUP-SECOND", feature), id=existing_id)],
    )
    assert store.count("tasks", f"key = '{existing_key}'") == 1
    assert store.count("tasks", "key IN ('GRPC-DUP-FIRST', 'GRPC-DUP-SECOND')") == 0
    assert store.count("tasks") == tasks_before
    assert clock(store) == version_before


def test_a_missing_not_null_column_or_foreign_key_is_failed_precondition(mutations, store):
    feature = some_feature(store)
    tasks_before = store.count("tasks")
    row = task("GRPC-NO-TITLE", feature)
    del row["title"]
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, mutations.insert, "tasks", [row])
    missing_feature = store.scalar("SELECT max(id) FROM features") + 1000
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        mutations.insert,
        "tasks",
        [task("GRPC-NO-FEATURE", missing_feature)],
    )
    assert store.count("tasks") == tasks_before


# --- idempotency ----------------------------------------------------------------------


def test_a_retry_with_the_same_idempotency_key_is_answered_without_writing_again(mutations, store):
    feature = some_feature(store)
    request = mutations.insert_request("tasks", [task("GRPC-IDEMPOTENT", feature)], "idem-insert-1")
    first = mutations.stub.Insert(request, timeout=60)
    assert not first.replayed
    version_after_first = clock(store)

    second = mutations.stub.Insert(request, timeout=60)
    assert second.replayed
    assert second.commit_version == first.commit_version == version_after_first
    assert second.affected_rows == first.affected_rows == 1
    assert list(second.generated_keys) == list(first.generated_keys)
    assert store.count("tasks", "key = 'GRPC-IDEMPOTENT'") == 1
    assert clock(store) == version_after_first


def test_an_idempotency_key_reused_for_another_request_is_failed_precondition(mutations, store):
    feature = some_feature(store)
    first = mutations.insert("tasks", [task("GRPC-IDEM-A", feature)], idempotency_key="idem-reused-1")
    assert not first.replayed
    version = clock(store)
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        mutations.insert,
        "tasks",
        [task("GRPC-IDEM-B", feature)],
        idempotency_key="idem-reused-1",
    )
    assert store.count("tasks", "key = 'GRPC-IDEM-A'") == 1
    assert store.count("tasks", "key = 'GRPC-IDEM-B'") == 0
    assert clock(store) == version


def test_an_apply_retry_is_replayed(mutations, store):
    feature = some_feature(store)
    operations = [
        mutations.insert_request("tasks", [task("GRPC-IDEM-APPLY", feature)]),
        mutations.update_request("tasks", mutations.predicate("key = 'GRPC-IDEM-APPLY'"), {"priority": 5}),
    ]
    first = mutations.apply(operations, idempotency_key="idem-apply-1")
    second = mutations.apply(operations, idempotency_key="idem-apply-1")
    assert (first.replayed, second.replayed) == (False, True)
    assert second.commit_version == first.commit_version
    assert [r.affected_rows for r in second.results] == [r.affected_rows for r in first.results] == [1, 1]
    assert store.rows("SELECT priority FROM tasks WHERE key = 'GRPC-IDEM-APPLY'") == [(5,)]


# --- bulk -----------------------------------------------------------------------------


def arrow_stream(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4096)
    return sink.getvalue()


def bulk_table(n: int, offset: int = 0) -> pa.Table:
    ids = list(range(offset + 1, offset + n + 1))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"item {i}" for i in ids], pa.string()),
            "amount": pa.array([i * 0.25 for i in ids], pa.float64()),
            "created_at": pa.array(
                [T0 + datetime.timedelta(seconds=i) for i in ids], pa.timestamp("us")
            ),
        }
    )


BULK_DDL = "CREATE TABLE {} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, amount DOUBLE PRECISION, created_at TIMESTAMP)"


def test_bulk_insert_of_an_arrow_ipc_stream(mutations, store, writer):
    writer.cursor().execute(BULK_DDL.format("grpc_bulk_items"))
    table = bulk_table(10_000)
    response = mutations.insert("grpc_bulk_items", mutations.pb.Rows(arrow_ipc=arrow_stream(table)))
    assert response.affected_rows == 10_000
    assert [r.affected_rows for r in response.results] == [10_000]
    assert response.commit_version == clock(store)

    assert store.count("grpc_bulk_items") == 10_000
    assert store.rows("SELECT min(id), max(id), sum(id), sum(amount) FROM grpc_bulk_items") == [
        (1, 10_000, sum(range(1, 10_001)), round(sum(i * 0.25 for i in range(1, 10_001)), 6))
    ]
    sample = store.rows(
        "SELECT id, name, amount, created_at FROM grpc_bulk_items WHERE id IN (1, 777, 4096, 4097, 10000) ORDER BY id"
    )
    assert sample == [
        (i, f"item {i}", round(i * 0.25, 6), ts(T0 + datetime.timedelta(seconds=i)))
        for i in (1, 777, 4096, 4097, 10000)
    ]


def test_bulk_insert_with_a_duplicate_key_changes_nothing(mutations, store, writer):
    writer.cursor().execute(BULK_DDL.format("grpc_bulk_dup"))
    mutations.insert("grpc_bulk_dup", mutations.pb.Rows(arrow_ipc=arrow_stream(bulk_table(100))))
    # Rows 51..150: the first 50 collide.
    rpc_error(
        grpc.StatusCode.ALREADY_EXISTS,
        mutations.insert,
        "grpc_bulk_dup",
        mutations.pb.Rows(arrow_ipc=arrow_stream(bulk_table(100, offset=50))),
    )
    assert store.count("grpc_bulk_dup") == 100
    assert store.scalar("SELECT max(id) FROM grpc_bulk_dup") == 100


def test_a_malformed_arrow_stream_is_invalid_argument(mutations, store, writer):
    writer.cursor().execute(BULK_DDL.format("grpc_bulk_garbage"))
    payload = arrow_stream(bulk_table(10))
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        mutations.insert,
        "grpc_bulk_garbage",
        mutations.pb.Rows(arrow_ipc=payload[: len(payload) // 2] + b"\x00garbage"),
    )
    assert store.count("grpc_bulk_garbage") == 0


def test_more_rows_than_the_limit_is_resource_exhausted(mutations, store, writer):
    writer.cursor().execute(BULK_DDL.format("grpc_bulk_too_many"))
    n = DEFAULT_MAX_MUTATION_ROWS + 1
    table = pa.table({"id": pa.array(range(1, n + 1), pa.int64()), "name": pa.array(["x"] * n, pa.string())})
    rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        mutations.insert,
        "grpc_bulk_too_many",
        mutations.pb.Rows(arrow_ipc=arrow_stream(table)),
    )
    assert store.count("grpc_bulk_too_many") == 0


# --- Flight sees gRPC writes ----------------------------------------------------------


def test_flight_reads_see_grpc_writes(mutations, store, writer):
    cur = writer.cursor()
    cur.execute("SELECT count(*) FROM tasks")
    assert cur.fetchone()[0] == store.count("tasks")

    new_id = insert_one(mutations, store, "GRPC-FLIGHT", priority=4, estimate_hours=1.5)
    cur.execute("SELECT count(*) FROM tasks")
    assert cur.fetchone()[0] == store.count("tasks")
    cur.execute("SELECT id, key, status, priority, estimate_hours, created_at FROM tasks WHERE key = 'GRPC-FLIGHT'")
    assert cur.fetch_arrow_table().to_pylist() == [
        {
            "id": new_id,
            "key": "GRPC-FLIGHT",
            "status": "todo",
            "priority": 4,
            "estimate_hours": 1.5,
            "created_at": T0,
        }
    ]

    mutations.update("tasks", mutations.keys([{"id": new_id}]), {"status": "review"})
    cur.execute(f"SELECT status FROM tasks WHERE id = {new_id}")
    assert cur.fetchall() == [("review",)]

    mutations.delete("tasks", mutations.keys([{"id": new_id}]))
    cur.execute(f"SELECT count(*) FROM tasks WHERE id = {new_id}")
    assert cur.fetchone()[0] == 0
