"""The subscription API (quiver.v1.Subscriptions, and the Flight `subscribe` action)
against real servers; the truth is the server's change log and tables read directly
from the store (`store`), never the server's own answers.

Writes go through the Mutations API; each call is one commit with one version
(`MutateResponse.commit_version`). Most tests share this module's server (one per
store, with a short progress interval); the restart, replica and limit tests start
servers of their own."""

import json
import statistics
import threading
import time

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import requests

from conftest import Store, fresh_database, running_server
from quiver_clients import (
    OP_NAMES,
    T0,
    Subscriptions,
    change_log,
    change_tuple,
    check_stream_invariants,
    checkpoint_of,
    clock,
    commit_versions,
    connect_mutations,
    connect_subscriptions,
    merge_runs,
    micros,
    pb_kinds,
    pb_row,
    some_feature,
    subscribe_error,
    task,
)

PROGRESS_MS = 200
# A small buffer: a subscriber that does not keep up is soon served from the change log.
SERVER_FLAGS = ["--subscription-progress-interval-ms", str(PROGRESS_MS), "--subscription-buffer", "64"]
FILTER = "status = 'blocked' AND priority <= 2"
TASK_KINDS = {
    "id": "int64",
    "feature_id": "int64",
    "key": "string",
    "title": "string",
    "description": "null",
    "status": "string",
    "priority": "int64",
    "agent_type": "null",
    "estimate_hours": "double",
    "created_at": "timestamp_micros",
    "updated_at": "timestamp_micros",
    "completed_at": "null",
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def writable_server(request, tmp_path_factory):
    """This module's server (overrides conftest's): Progress every PROGRESS_MS."""
    with running_server(request.param, tmp_path_factory, sqlite_truth=False, extra_args=SERVER_FLAGS) as running:
        yield running


@pytest.fixture(scope="module")
def subscriptions(writable_server, subscriptions_pb):
    client, channel = connect_subscriptions(writable_server.grpc_addr, subscriptions_pb)
    yield client
    channel.close()


def blocked_high(row) -> bool:
    """FILTER, evaluated in Python on a row image of the change log."""
    return row is not None and row["status"] == "blocked" and row["priority"] <= 2


def filtered(log, matches) -> list[tuple]:
    """The documented filter semantics applied to change-log entries: an insert when
    the new row matches, a delete when the old row matched, an update when either
    did; a truncate always."""
    out = []
    for change in log:
        op, after, before = change[3], change[5], change[6]
        if (
            (op == "insert" and matches(after))
            or (op == "delete" and matches(before))
            or (op == "update" and (matches(after) or matches(before)))
            or op == "truncate"
        ):
            out.append(change)
    return out


def delivered(subscription, upto: int | None = None) -> list[tuple]:
    return [change_tuple(c) for c in subscription.changes if upto is None or c.version <= upto]


def task_key(change: tuple) -> str:
    """The `key` column (the task's business key) of a change tuple's row image."""
    return (change[5] or change[6])["key"]


def new_id(response, i: int = 0) -> int:
    return response.generated_keys[i].values["id"].int64


# --- acceptance: filtered, ordered, exact ---------------------------------------------


def test_a_filtered_subscription_receives_exactly_the_matching_changes_in_order(subscriptions, mutations, store):
    feature = some_feature(store)
    prefix = "SUB-ACC-"
    with subscriptions.open(filter=FILTER, latest=True) as sub:
        # Start `latest`: the first Progress says where the stream starts.
        sub.wait(lambda s: s.progresses, "a first Progress", timeout=10)
        start = sub.progresses[0].version
        assert start == clock(store), "nothing else writes: a latest stream starts at the clock"

        # Hand-derived expectations, per commit: {(task number, op)}.
        expected = {}

        def commit(response, changes, affected=None):
            if affected is not None:
                assert response.affected_rows == affected
            assert response.commit_version not in expected
            expected[response.commit_version] = changes
            return response

        rows = [
            (1, "blocked", 1),
            (2, "blocked", 2),
            (3, "blocked", 3),
            (4, "todo", 1),
            (5, "blocked", 1),
            (6, "done", 2),
        ]
        first = mutations.insert(
            "tasks",
            [task(f"{prefix}{n}", feature, status=s, priority=p, estimate_hours=1.5) for n, s, p in rows],
        )
        ids = {n: new_id(first, i) for i, (n, _, _) in enumerate(rows)}
        commit(first, [(1, "insert"), (2, "insert"), (5, "insert")], affected=6)
        # The store's own evaluation of the filter over what was inserted.
        assert store.rows(f"SELECT key FROM tasks WHERE ({FILTER}) AND key LIKE '{prefix}%' ORDER BY key") == [
            (f"{prefix}1",),
            (f"{prefix}2",),
            (f"{prefix}5",),
        ]
        seventh = mutations.insert("tasks", [task(f"{prefix}7", feature, status="blocked", priority=2)])
        ids[7] = new_id(seventh)
        commit(seventh, [(7, "insert")])

        all_keys = "key IN (" + ", ".join(f"'{prefix}{n}'" for n in range(1, 10)) + ")"

        def by_key(n):
            return mutations.keys([{"id": ids[n]}])

        commit(mutations.update("tasks", by_key(4), {"status": "blocked"}), [(4, "update")], 1)  # moves in
        commit(mutations.update("tasks", by_key(1), {"status": "done"}), [(1, "update")], 1)  # moves out
        commit(mutations.update("tasks", by_key(3), {"priority": 4}), [], 1)  # never matches
        commit(mutations.update("tasks", by_key(2), {"priority": 1}), [(2, "update")], 1)  # stays in
        # Several rows in one commit: blocked are 2, 3 (priority 4), 4, 5, 7.
        commit(
            mutations.update(
                "tasks",
                mutations.predicate(f"{all_keys} AND status = 'blocked'"),
                {"agent_type": "acceptance"},
            ),
            [(2, "update"), (4, "update"), (5, "update"), (7, "update")],
            5,
        )
        commit(mutations.delete("tasks", by_key(5)), [(5, "delete")], 1)  # matched
        commit(mutations.delete("tasks", by_key(6)), [], 1)  # never matched
        # One commit of three operations: in the order made.
        applied = mutations.apply(
            [
                mutations.insert_request("tasks", [task(f"{prefix}8", feature, status="blocked", priority=1)]),
                mutations.update_request("tasks", mutations.predicate(f"key = '{prefix}8'"), {"priority": 5}),
                mutations.insert_request("tasks", [task(f"{prefix}9", feature, status="todo", priority=5)]),
            ]
        )
        commit(applied, [(8, "insert"), (8, "update")], 3)
        commit(mutations.update("tasks", by_key(3), {"priority": 2}), [(3, "update")], 1)  # moves in
        commit(
            mutations.delete("tasks", mutations.predicate(f"{all_keys} AND status = 'done'")),
            [],
            1,
        )
        last = max(expected)
        assert sorted(expected) == list(range(start + 1, last + 1)), "one version per commit, consecutive"
        sub.wait_progress(last)
        responses = sub.snapshot()
        got = delivered(sub)

    check_stream_invariants(responses)
    log = change_log(store, start)
    assert [c[0] for c in log] == sorted(c[0] for c in log)
    # Exactly the matching changes of the log, in log order, with their full images.
    assert got == filtered(log, blocked_high)
    # ... which are the hand-derived ones (within a commit of several rows, in the
    # log's order; the Apply's two changes in the order made).
    for version, changes in expected.items():
        in_commit = [(int(task_key(c)[len(prefix):]), c[3]) for c in got if c[0] == version]
        assert sorted(in_commit) == sorted(changes), f"commit {version}"
        if version == applied.commit_version:
            assert in_commit == changes
    assert {c[0] for c in got} <= set(expected)

    # Applying the stream to "the set of matching rows" gives what the store says now.
    matching = set()
    for change in got:
        op, after = change[3], change[5]
        if op in ("insert", "update") and blocked_high(after):
            matching.add(after["key"])
        else:
            matching.discard(task_key(change))
    now = store.rows(f"SELECT key FROM tasks WHERE ({FILTER}) AND key LIKE '{prefix}%'")
    assert matching == {key for (key,) in now}

    # Typed values, as the Mutations API writes them.
    inserted = [c for c in sub.changes if OP_NAMES[c.op] == "insert" and c.version == first.commit_version]
    event = inserted[0]
    assert event.table == "tasks"
    assert pb_kinds(event.key) == {"id": "int64"}
    assert pb_row(event.key) == {"id": ids[1]}
    assert pb_kinds(event.after) == TASK_KINDS
    assert pb_row(event.after) == {
        **task(f"{prefix}1", feature, status="blocked", priority=1, estimate_hours=1.5),
        "id": ids[1],
        "description": None,
        "agent_type": None,
        "completed_at": None,
    }
    assert not event.before.values
    committed_at = store.scalar(f"SELECT committed_at FROM _quiver_commits WHERE version = {first.commit_version}")
    assert event.committed_at_micros == committed_at
    moved_out = [c for c in sub.changes if OP_NAMES[c.op] == "update" and pb_row(c.key) == {"id": ids[1]}]
    assert len(moved_out) == 1
    assert pb_row(moved_out[0].before)["status"] == "blocked"
    assert pb_row(moved_out[0].after)["status"] == "done"


def test_from_version_zero_replays_the_whole_log(subscriptions, mutations, store):
    feature = some_feature(store)
    mutations.insert("tasks", [task("SUB-ZERO-1", feature)])
    latest = clock(store)
    with subscriptions.open(from_version=0) as sub:
        sub.wait_progress(latest)
        responses = sub.snapshot()
    check_stream_invariants(responses)
    got = [
        change_tuple(r.change)
        for r in responses
        if r.WhichOneof("event") == "change" and r.change.version <= latest
    ]
    log = change_log(store, 0, upto_version=latest)
    assert log, "earlier tests wrote"
    assert got == log


def test_progress_arrives_at_the_interval_when_idle(subscriptions, store):
    with subscriptions.open(latest=True) as sub:
        time.sleep(1.6)
        responses = sub.snapshot()
        arrivals = list(sub.arrivals)
    assert responses, "Progress arrives while nothing changes"
    assert all(r.WhichOneof("event") == "progress" for r in responses)
    now = clock(store)
    assert all(r.progress.version == r.progress.latest_version == now for r in responses), responses
    assert len(responses) >= 4, f"{len(responses)} Progress in 1.6 s at a {PROGRESS_MS} ms interval"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert 0.1 <= statistics.median(gaps) <= 0.5, gaps


def test_a_trace_parent_travels_with_the_change(subscriptions, mutations, store):
    feature = some_feature(store)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    start = clock(store)
    with subscriptions.open(from_version=start) as sub:
        traced = mutations.insert("tasks", [task("SUB-TRACE-1", feature)], metadata=(("traceparent", traceparent),))
        plain = mutations.insert("tasks", [task("SUB-TRACE-2", feature)])
        sub.wait_progress(plain.commit_version)
        changes = sub.changes
    assert [c.version for c in changes] == [traced.commit_version, plain.commit_version]
    assert store.scalar(f"SELECT trace_context FROM _quiver_commits WHERE version = {traced.commit_version}") == (
        traceparent
    )
    assert changes[0].trace_parent == traceparent
    assert changes[1].trace_parent == ""


# --- ordering and completeness ---------------------------------------------------------


def test_concurrent_writers_are_delivered_in_log_order(subscriptions, writable_server, quiver_pb, store):
    feature = some_feature(store)
    start = clock(store)
    acknowledged, failures = [], []
    lock = threading.Lock()

    def write(worker: int):
        client, channel = connect_mutations(writable_server.grpc_addr, quiver_pb)
        try:
            ids = []
            for i in range(25):
                if i % 3 == 2:
                    response = client.update(
                        "tasks", client.keys([{"id": ids[-1]}]), {"priority": 1 + i % 5, "title": f"w{worker} {i}"}
                    )
                else:
                    response = client.insert("tasks", [task(f"SUB-CONC-{worker}-{i}", feature)])
                    ids.append(new_id(response))
                assert response.affected_rows == 1
                with lock:
                    acknowledged.append(response.commit_version)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(error)
        finally:
            channel.close()

    with subscriptions.open(from_version=start) as sub:
        writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in writers), "writers finish"
        assert not failures, failures
        end = clock(store)
        sub.wait_progress(end, timeout=60)
        responses = sub.snapshot()
        got = delivered(sub, end)

    check_stream_invariants(responses)
    assert sorted(acknowledged) == list(range(start + 1, end + 1)), "every call one version, consecutive"
    assert commit_versions(store, start, end) == list(range(start + 1, end + 1))
    log = change_log(store, start, upto_version=end)
    assert len(log) == 100
    assert got == log
    assert [c[0] for c in got] == list(range(start + 1, end + 1))


def test_tables_of_one_subscription_and_schema_qualified_names(subscriptions, mutations, store, writable_server):
    feature = some_feature(store)
    task_id = 910_000_001
    qualified = f"{writable_server.schema}.tasks"
    start = clock(store)
    with (
        subscriptions.open(("tasks", "task_history"), from_version=start) as both,
        subscriptions.open((qualified,), from_version=start) as named,
    ):
        applied = mutations.apply(
            [
                mutations.insert_request("tasks", [dict(task("SUB-MULTI-1", feature), id=task_id)]),
                mutations.insert_request(
                    "task_history",
                    [{"task_id": task_id, "old_status": "todo", "new_status": "in_progress", "changed_at": T0}],
                ),
                mutations.update_request("tasks", mutations.keys([{"id": task_id}]), {"status": "in_progress"}),
            ]
        )
        # The cascade deletes the history row in the same commit.
        deleted = mutations.delete("tasks", mutations.keys([{"id": task_id}]))
        both.wait_progress(deleted.commit_version)
        named.wait_progress(deleted.commit_version)
        got_both, got_named = delivered(both), delivered(named)

    log = change_log(store, start, tables=("tasks", "task_history"))
    assert [(c[0], c[2], c[3]) for c in log[:3]] == [
        (applied.commit_version, "tasks", "insert"),
        (applied.commit_version, "task_history", "insert"),
        (applied.commit_version, "tasks", "update"),
    ]
    assert sorted((c[0], c[2], c[3]) for c in log[3:]) == [
        (deleted.commit_version, "task_history", "delete"),
        (deleted.commit_version, "tasks", "delete"),
    ]
    assert got_both == log
    # A schema-qualified request follows the same table; events name it as the
    # change log does (bare in the default schema).
    only_tasks = [c for c in log if c[2] == "tasks"]
    assert [c[2] for c in got_named] == ["tasks"] * len(only_tasks), (
        f"ChangeEvent.table of a table requested as {qualified!r} is its log name"
    )
    assert got_named == only_tasks


def test_truncate_is_delivered_whatever_the_filter(subscriptions, mutations, store, writer, writable_server):
    if writable_server.kind != "postgres":
        pytest.skip("SQLite has no TRUNCATE")
    writer.cursor().execute("CREATE TABLE sub_truncated (id BIGINT PRIMARY KEY, label TEXT)")
    mutations.insert("sub_truncated", [{"id": i, "label": f"row {i}"} for i in range(1, 4)])
    start = clock(store)
    with subscriptions.open(("sub_truncated",), filter="id < 0", from_version=start) as sub:
        writer.cursor().execute("TRUNCATE sub_truncated")
        after = mutations.insert("sub_truncated", [{"id": -1, "label": "after"}, {"id": 5, "label": "not matching"}])
        sub.wait_progress(after.commit_version)
        changes = sub.changes
    log = change_log(store, start, tables=("sub_truncated",))
    assert [(c[0], c[3]) for c in log] == [
        (after.commit_version - 1, "truncate"),
        (after.commit_version, "insert"),
        (after.commit_version, "insert"),
    ]
    assert [(c.version, OP_NAMES[c.op], pb_row(c.after)) for c in changes] == [
        (after.commit_version - 1, "truncate", {}),
        (after.commit_version, "insert", {"id": -1, "label": "after"}),
    ]
    assert not changes[0].key.values and not changes[0].before.values


# --- resume -----------------------------------------------------------------------------


def test_resume_after_a_disconnect_loses_nothing(subscriptions, mutations, store):
    """Checkpoint: the last Progress.version, or the version just below the last change
    received (`checkpoint_of`) — changes come in version order, so every change below
    it has been received, while the last version may have been cut mid-commit."""
    feature = some_feature(store)
    start = clock(store)

    def three(batch: int, i: int):
        keys = [f"SUB-RESUME-{batch}-{i}-{j}" for j in range(3)]
        return mutations.insert("tasks", [task(k, feature) for k in keys]).commit_version

    before = [three(1, i) for i in range(5)]
    # Read 7 changes (two commits and one row of the third), then disconnect.
    request = subscriptions.request(from_version=start)
    call = subscriptions.stub.Subscribe(request, timeout=30)
    first = []
    try:
        for response in call:
            first.append(response)
            if sum(r.WhichOneof("event") == "change" for r in first) == 7:
                break
    finally:
        call.cancel()
    check_stream_invariants(first)
    checkpoint = checkpoint_of(first, start)
    assert checkpoint == before[1], "cut inside the third commit: resume after the second"

    after = [three(2, i) for i in range(5)]
    end = after[-1]
    with subscriptions.open(from_version=checkpoint) as second:
        second.wait_progress(end)
        responses = second.snapshot()
    check_stream_invariants(responses)

    first_changes = [change_tuple(r.change) for r in first if r.WhichOneof("event") == "change"]
    second_changes = [change_tuple(r.change) for r in responses if r.WhichOneof("event") == "change"]
    log = change_log(store, start, upto_version=end)
    assert len(log) == 30
    # The second stream is exactly the log after the checkpoint, re-delivering the
    # commit the first stream was cut in; the union is the whole log.
    assert second_changes == change_log(store, checkpoint, upto_version=end)
    assert second_changes[0] == first_changes[6]
    assert merge_runs([(start, first_changes), (checkpoint, second_changes)]) == log


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request):
    """A store kind, for tests that start servers of their own."""
    return request.param


class ResumingSubscriber:
    """Follows one subscription (all of `tasks`) across disconnects and restarts: on
    any stream error it connects to the current address and resumes from its
    checkpoint (`checkpoint_of`). `runs` holds (from_version, [responses]) per stream."""

    def __init__(self, subscriptions_pb, address, start: int):
        self.pb, self.pb_grpc = subscriptions_pb
        self.address = address
        self.checkpoint = start
        self.runs = []
        self.errors = []
        self.failure = None
        self._call = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self):
        try:
            while not self._stop.is_set():
                channel = grpc.insecure_channel(self.address())
                try:
                    stub = self.pb_grpc.SubscriptionsStub(channel)
                    with self._lock:
                        if self._stop.is_set():
                            return
                        run = (self.checkpoint, [])
                        self.runs.append(run)
                        request = self.pb.SubscribeRequest(tables=["tasks"], from_version=self.checkpoint)
                        self._call = stub.Subscribe(request, timeout=120)
                        call = self._call
                    for response in call:
                        with self._lock:
                            run[1].append(response)
                            self.checkpoint = checkpoint_of([response], self.checkpoint)
                except grpc.RpcError as error:
                    self.errors.append(error.code())
                    if not self._stop.is_set():
                        time.sleep(0.2)
                finally:
                    channel.close()
        except Exception as error:  # noqa: BLE001 - reported by close()
            self.failure = error

    def wait_checkpoint(self, version: int, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while self.checkpoint < version:
            assert self.failure is None, self.failure
            assert time.monotonic() < deadline, (
                f"the subscriber reached {self.checkpoint}, not {version}, in {timeout}s; errors {self.errors[-5:]}"
            )
            time.sleep(0.05)

    def close(self):
        with self._lock:
            self._stop.set()
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the subscriber thread ends"
        assert self.failure is None, self.failure


def test_a_subscriber_resumes_across_a_server_sigkill(tmp_path_factory, quiver_pb, subscriptions_pb, kind):
    """Acceptance: a server is killed with SIGKILL under a write load and restarted on
    the same database; the writer carries on (errors during the outage are fine), the
    subscriber resumes from its checkpoint. Every acknowledged commit is in the log,
    and the streams together deliver exactly the log."""
    with fresh_database(kind, tmp_path_factory) as database:
        servers = [database.server(SERVER_FLAGS)]
        store = Store(servers[0])
        subscriber = None
        try:
            try:
                feature = some_feature(store)
                start = clock(store)
                address = {"grpc": servers[0].grpc_addr}
                acknowledged, write_errors = [], []
                stop_writing = threading.Event()

                def write():
                    addr, client, channel, i = None, None, None, 0
                    while not stop_writing.is_set():
                        try:
                            if addr != address["grpc"]:
                                if channel is not None:
                                    channel.close()
                                addr = address["grpc"]
                                client, channel = connect_mutations(addr, quiver_pb)
                            key = f"SUB-KILL-{i}"
                            i += 1  # a call that failed may still have committed: never reuse a key
                            request = client.insert_request("tasks", [task(key, feature)])
                            response = client.stub.Insert(request, timeout=5)
                            acknowledged.append((response.commit_version, key, time.monotonic()))
                        except (grpc.RpcError, grpc.FutureTimeoutError) as error:
                            write_errors.append(error)
                            time.sleep(0.05)
                        time.sleep(0.005)
                    if channel is not None:
                        channel.close()

                writer = threading.Thread(target=write, daemon=True)
                subscriber = ResumingSubscriber(subscriptions_pb, lambda: address["grpc"], start)
                writer.start()
                try:
                    time.sleep(1.5)
                    before_kill = len(acknowledged)
                    servers[0].kill()
                    killed_at = time.monotonic()
                    time.sleep(0.5)
                    servers.append(database.server(SERVER_FLAGS))
                    address["grpc"] = servers[-1].grpc_addr
                    time.sleep(2.0)
                finally:
                    stop_writing.set()
                    writer.join(timeout=30)
                assert not writer.is_alive(), "the writer stops"
                end = clock(store)
                try:
                    subscriber.wait_checkpoint(end, timeout=30)
                finally:
                    subscriber.close()
            finally:
                if subscriber is not None:
                    subscriber.close()
                for server in servers:
                    if server.process.poll() is None:
                        server.stop()
            assert servers[-1].process.returncode == 0, "the restarted server exits cleanly:\n" + "".join(
                servers[-1].log[-20:]
            )

            assert before_kill > 0, "writes were acknowledged before the kill"
            assert any(at > killed_at for _, _, at in acknowledged), f"writes resumed: {write_errors[-3:]}"
            assert len(subscriber.runs) >= 2, "the subscriber had to reconnect"

            versions = commit_versions(store, start, end)
            assert versions == list(range(start + 1, end + 1)), "versions stay consecutive across the kill"
            log = change_log(store, start, upto_version=end)
            assert [c[0] for c in log] == versions, "one insert per commit"
            logged = {c[0]: c[5]["key"] for c in log}
            for version, key, _ in acknowledged:
                assert logged.get(version) == key, f"acknowledged version {version} ({key}) is in the log"
            runs = []
            for run_from, responses in subscriber.runs:
                check_stream_invariants(responses)
                changes = [change_tuple(r.change) for r in responses if r.WhichOneof("event") == "change"]
                changes = [c for c in changes if c[0] <= end]
                # Each stream is exactly the log after where it resumed, up to where it stopped.
                assert changes == [c for c in log if c[0] > run_from][: len(changes)], f"the stream from {run_from}"
                runs.append((run_from, changes))
            assert merge_runs(runs) == log, "together the streams are the log: no gap, no disorder"
        finally:
            store.close()


# --- replicas ---------------------------------------------------------------------------


def test_two_replicas_deliver_each_others_commits(tmp_path_factory, quiver_pb, subscriptions_pb):
    """Two servers on one PostgreSQL database: a commit made through one is delivered
    to a subscriber of the other well within 2 s."""
    with fresh_database("postgres", tmp_path_factory) as database:
        servers = {"a": database.server(SERVER_FLAGS)}
        channels = []
        store = None
        try:
            servers["b"] = database.server(SERVER_FLAGS)
            store = Store(servers["a"])
            writers, followers = {}, {}
            for name, server in servers.items():
                writers[name], channel = connect_mutations(server.grpc_addr, quiver_pb)
                channels.append(channel)
                followers[name], channel = connect_subscriptions(server.grpc_addr, subscriptions_pb)
                channels.append(channel)
            feature = some_feature(store)
            start = clock(store)
            with followers["a"].open(from_version=start) as on_a, followers["b"].open(from_version=start) as on_b:
                watchers = {"a": on_b, "b": on_a}  # a write through one, watched on the other
                versions = []
                for i, through in enumerate(["a", "b", "a", "b"]):
                    response = writers[through].insert("tasks", [task(f"SUB-REPLICA-{i}", feature)])
                    acknowledged = time.monotonic()
                    watcher = watchers[through]
                    watcher.wait(
                        lambda s: s.arrival_of(response.commit_version) is not None,
                        f"version {response.commit_version} written through {through}",
                        timeout=10,
                    )
                    latency = watcher.arrival_of(response.commit_version) - acknowledged
                    assert latency < 2.0, f"written through {through}, delivered on the other after {latency:.2f}s"
                    versions.append(response.commit_version)
                assert versions == list(range(start + 1, start + 5)), "one clock across replicas"
                on_a.wait_progress(versions[-1])
                on_b.wait_progress(versions[-1])
                log = change_log(store, start)
                assert delivered(on_a) == log
                assert delivered(on_b) == log
        finally:
            for channel in channels:
                channel.close()
            if store is not None:
                store.close()
            for server in servers.values():
                server.stop()
        for name, server in servers.items():
            assert server.process.returncode == 0, f"replica {name} exits cleanly:\n" + "".join(server.log[-20:])


# --- slow consumers -------------------------------------------------------------------


# A client that takes no more than ~64 KiB from the network before it reads: no BDP
# probing growing the HTTP/2 window behind the test's back.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_536)]


def test_a_slow_subscriber_does_not_stop_writers_and_catches_up(
    subscriptions, subscriptions_pb, mutations, store, writable_server
):
    """A subscriber that reads nothing while 600 commits (~2.5 MB of events) are made:
    far more than its buffer (64 messages) and the pages the shared tail keeps for it.
    Every write succeeds; reading afterwards, it receives every change in order, served
    from the change log; a normal subscriber meanwhile receives everything too."""
    feature = some_feature(store)
    start = clock(store)
    padding = "x" * 4096
    channel = grpc.insecure_channel(writable_server.grpc_addr, options=SMALL_WINDOW)
    slow_client = Subscriptions(subscriptions_pb[0], subscriptions_pb[1].SubscriptionsStub(channel))
    slow = slow_client.open(from_version=start, start=False)  # opened, not read
    try:
        with subscriptions.open(from_version=start) as normal:
            versions = []
            for i in range(600):
                response = mutations.insert("tasks", [task(f"SUB-SLOW-{i}", feature, description=f"{padding} {i}")])
                assert response.affected_rows == 1
                versions.append(response.commit_version)
            end = versions[-1]
            assert versions == list(range(start + 1, end + 1))
            normal.wait_progress(end, timeout=60)
            normal_responses = normal.snapshot()
        # Only the slow subscriber is left: far behind, while the writes went through.
        behind = wait_metrics(
            writable_server,
            lambda m: m["quiver_subscription_lag_versions_max"] >= 100,
            "the slow subscriber's lag",
        )
        slow.read()
        slow.wait_progress(end, timeout=60)
        slow_responses = slow.snapshot()
        caught_up = wait_metrics(
            writable_server, lambda m: m["quiver_subscription_lag_versions_max"] == 0, "no lag once caught up"
        )
        assert (
            caught_up["quiver_subscription_catchup_reads_total"] > behind["quiver_subscription_catchup_reads_total"]
        ), "the slow subscriber was served from the change log"
    finally:
        slow.cancel()
        channel.close()
    log = change_log(store, start, upto_version=end)
    assert len(log) == 600
    for name, responses in (("normal", normal_responses), ("slow", slow_responses)):
        check_stream_invariants(responses)
        changes = [change_tuple(r.change) for r in responses if r.WhichOneof("event") == "change"]
        assert [c for c in changes if c[0] <= end] == log, f"the {name} subscriber"


# --- snapshot, projection ---------------------------------------------------------------


def test_a_snapshot_start_sends_the_matching_rows_then_progress_then_changes(subscriptions, mutations, store):
    feature = some_feature(store)
    with subscriptions.open(filter=FILTER, snapshot=True) as sub:
        sub.wait(lambda s: s.progresses, "the snapshot's Progress", timeout=30)
        # Nothing writes meanwhile: the snapshot is the store's rows now.
        version = clock(store)
        truth = store.rows(
            f"SELECT id, key, status, priority, title, agent_type, estimate_hours, created_at "
            f"FROM tasks WHERE {FILTER} ORDER BY id"
        )
        assert truth, "some tasks match"
        matching = mutations.insert("tasks", [task("SUB-SNAP-IN", feature, status="blocked", priority=2)])
        other = mutations.insert("tasks", [task("SUB-SNAP-OUT", feature, status="blocked", priority=3)])
        sub.wait_progress(other.commit_version)
        responses = sub.snapshot()

    kinds = [r.WhichOneof("event") for r in responses]
    first_progress = kinds.index("progress")
    rows = [r.change for r in responses[:first_progress]]
    assert all(OP_NAMES[c.op] == "snapshot" for c in rows), "the snapshot rows come first"
    assert {c.version for c in rows} == {version}
    assert responses[first_progress].progress.version == version
    check_stream_invariants(responses)

    def snapshot_row(change):
        row = pb_row(change.after)
        assert pb_row(change.key) == {"id": row["id"]}
        assert not change.before.values
        created = row["created_at"].strftime("%Y-%m-%d %H:%M:%S")
        estimate = None if row["estimate_hours"] is None else round(row["estimate_hours"], 6)
        return (
            row["id"],
            row["key"],
            row["status"],
            row["priority"],
            row["title"],
            row["agent_type"],
            estimate,
            created,
        )

    assert sorted(snapshot_row(c) for c in rows) == [
        (*r[:7], str(r[7])[:19].replace("T", " ")) for r in truth
    ]
    later = [r.change for r in responses[first_progress:] if r.WhichOneof("event") == "change"]
    assert [(c.version, OP_NAMES[c.op], pb_row(c.after)["key"]) for c in later] == [
        (matching.commit_version, "insert", "SUB-SNAP-IN")
    ]
    assert matching.commit_version > version


def test_a_column_projection_shapes_after_and_before_but_not_the_key(subscriptions, mutations, store):
    feature = some_feature(store)
    start = clock(store)
    with (
        subscriptions.open(columns=["id", "status"], from_version=start) as with_id,
        subscriptions.open(columns=["status"], filter="priority <= 2", from_version=start) as without_id,
    ):
        inserted = mutations.insert("tasks", [task("SUB-PROJ-1", feature, priority=2)])
        task_id = new_id(inserted)
        where = mutations.keys([{"id": task_id}])
        reviewed = mutations.update("tasks", where, {"status": "review"})
        lowered = mutations.update("tasks", where, {"priority": 4})  # leaves the filter
        deleted = mutations.delete("tasks", where)  # did not match any more
        with_id.wait_progress(deleted.commit_version)
        without_id.wait_progress(deleted.commit_version)
        a, b = with_id.changes, without_id.changes

    def shape(change):
        return (
            change.version,
            OP_NAMES[change.op],
            pb_row(change.key),
            pb_row(change.after) if change.after.values else None,
            pb_row(change.before) if change.before.values else None,
        )

    key = {"id": task_id}
    todo, review = {"id": task_id, "status": "todo"}, {"id": task_id, "status": "review"}
    assert [shape(c) for c in a] == [
        (inserted.commit_version, "insert", key, todo, None),
        (reviewed.commit_version, "update", key, review, todo),
        (lowered.commit_version, "update", key, review, review),
        (deleted.commit_version, "delete", key, None, review),
    ]
    # The filter sees the whole row (priority), the projection keeps only status.
    assert [shape(c) for c in b] == [
        (inserted.commit_version, "insert", key, {"status": "todo"}, None),
        (reviewed.commit_version, "update", key, {"status": "review"}, {"status": "todo"}),
        (lowered.commit_version, "update", key, {"status": "review"}, {"status": "review"}),
    ]


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tables, filter, columns, code, named",
    [
        (["no_such_table"], "", [], "NOT_FOUND", "no_such_table"),
        (["tasks", "no_such_table"], "", [], "NOT_FOUND", "no_such_table"),
        ([], "", [], "INVALID_ARGUMENT", None),
        (["tasks"], "status = = 1", [], "INVALID_ARGUMENT", None),
        (["tasks"], "no_such_column = 1", [], "INVALID_ARGUMENT", "no_such_column"),
        (["tasks"], "priority + 1", [], "INVALID_ARGUMENT", None),
        (["tasks", "features"], "agent_type = 'coder'", [], "INVALID_ARGUMENT", None),
        (["tasks"], "", ["id", "no_such_column"], "INVALID_ARGUMENT", "no_such_column"),
    ],
    ids=[
        "unknown-table",
        "one-unknown-table",
        "no-tables",
        "malformed-filter",
        "filter-unknown-column",
        "filter-not-boolean",
        "filter-not-over-every-table",
        "unknown-projected-column",
    ],
)
def test_a_bad_request_fails_when_the_stream_starts(subscriptions, store, tables, filter, columns, code, named):
    version = clock(store)
    request = subscriptions.request(tables, filter, columns, latest=True)
    error = subscribe_error(subscriptions.stub, request, getattr(grpc.StatusCode, code))
    if named:
        assert named in error.details()
    assert clock(store) == version, "nothing is written"


def test_the_subscriber_limit_and_the_default_progress_interval(tmp_path_factory, subscriptions_pb, kind):
    with running_server(kind, tmp_path_factory, sqlite_truth=False, extra_args=["--max-subscribers", "2"]) as server:
        client, channel = connect_subscriptions(server.grpc_addr, subscriptions_pb)
        opened = []
        try:
            opened += [client.open(latest=True), client.open(latest=True)]
            for sub in opened:
                sub.wait(lambda s: s.progresses, "a first Progress", timeout=10)
            error = subscribe_error(client.stub, client.request(latest=True), grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert error.details()

            # The default interval: about one Progress a second.
            opened[0].wait(lambda s: len(s.progresses) >= 4, "four Progress", timeout=10)
            gaps = [b - a for a, b in zip(opened[0].arrivals, opened[0].arrivals[1:])]
            assert 0.7 <= statistics.median(gaps) <= 1.5, gaps

            # A place frees up once a subscriber leaves.
            opened.pop().cancel()
            deadline = time.monotonic() + 10
            while True:
                sub = client.open(latest=True)
                opened.append(sub)
                sub.wait(lambda s: s.progresses or s.done, "a Progress or an error", timeout=10)
                if sub.progresses:
                    break
                assert sub.error is not None and sub.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, sub.describe()
                opened.pop().cancel()
                assert time.monotonic() < deadline, "a cancelled subscriber frees its place within 10 s"
                time.sleep(0.2)
        finally:
            for sub in opened:
                sub.cancel()
            channel.close()


# --- Flight -----------------------------------------------------------------------------


class FlightFollow:
    """A Flight `subscribe` stream (DoGet) read by a background thread."""

    def __init__(self, client, ticket, timeout: float = 60):
        self.reader = client.do_get(ticket, flight.FlightCallOptions(timeout=timeout))
        self.chunks = []  # (RecordBatch | None, app_metadata dict | None)
        self.error = None
        self.done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            while True:
                chunk = self.reader.read_chunk()
                metadata = None if chunk.app_metadata is None else json.loads(chunk.app_metadata.to_pybytes())
                with self._cond:
                    self.chunks.append((chunk.data, metadata))
                    self._cond.notify_all()
        except StopIteration:
            pass
        except Exception as error:  # noqa: BLE001 - kept for the test to see
            self.error = error
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def metadata(self) -> list:
        with self._cond:
            return [m for _, m in self.chunks]

    def checkpoint(self) -> int:
        versions = [m["version"] for m in self.metadata() if m and "version" in m]
        return max(versions) if versions else -1

    def rows(self) -> int:
        with self._cond:
            return sum(d.num_rows for d, _ in self.chunks if d is not None)

    def table(self) -> pa.Table:
        with self._cond:
            batches = [d for d, _ in self.chunks if d is not None]
        return pa.Table.from_batches(batches, schema=self.reader.schema)

    def wait(self, condition, what: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self):
                assert not self.done, f"the Flight stream ended before {what}: {self.error!r}"
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out waiting for {what}: {len(self.chunks)} chunks, {self.rows()} rows"
                self._cond.wait(min(remaining, 0.5))

    def cancel(self):
        self.reader.cancel()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the Flight reader ends after cancel"


def flight_subscribe(client, body: dict) -> FlightFollow:
    action = flight.Action("subscribe", json.dumps(body).encode())
    results = list(client.do_action(action, flight.FlightCallOptions(timeout=30)))
    assert len(results) == 1, "one result: the ticket"
    return FlightFollow(client, flight.Ticket(results[0].body.to_pybytes()))


def test_flight_follows_a_filtered_table(writable_server, mutations, store, writer):
    feature = some_feature(store)
    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        start = clock(store)
        follow = flight_subscribe(client, {"tables": ["tasks"], "filter": FILTER, "from_version": start})
        try:
            a = mutations.insert(
                "tasks", [task("SUB-FLIGHT-A", feature, status="blocked", priority=1, estimate_hours=2.5)]
            )
            b = mutations.insert("tasks", [task("SUB-FLIGHT-B", feature, status="todo", priority=1)])
            c = mutations.insert("tasks", [task("SUB-FLIGHT-C", feature, status="blocked", priority=2)])
            id_a, id_c = new_id(a), new_id(c)
            later = T0.replace(hour=17)
            moved = mutations.update(
                "tasks", mutations.keys([{"id": id_a}]), {"status": "done", "completed_at": later}
            )
            gone = mutations.delete("tasks", mutations.keys([{"id": id_c}]))
            follow.wait(lambda f: f.checkpoint() >= gone.commit_version, f"a checkpoint at {gone.commit_version}")
            table = follow.table()
            metadata = follow.metadata()
        finally:
            follow.cancel()
    finally:
        client.close()

    columns = store.columns("tasks")
    assert table.schema.names == ["_version", "_op", "_committed_at", *columns]
    assert table.schema.field("_version").type == pa.int64()
    assert table.schema.field("_op").type == pa.string()
    assert table.schema.field("_committed_at").type == pa.timestamp("us", tz="UTC")
    table_schema = writer.adbc_get_table_schema("tasks")
    assert [table.schema.field(n).type for n in columns] == [table_schema.field(n).type for n in columns]

    assert all(m is not None and isinstance(m.get("version"), int) for m in metadata), metadata
    assert all(m["latest_version"] >= m["version"] for m in metadata), metadata
    versions = [m["version"] for m in metadata]
    assert versions == sorted(versions)

    def written(key, task_id, **values):
        return {
            **task(key, feature, **values),
            "id": task_id,
            "description": None,
            "agent_type": None,
            "estimate_hours": values.get("estimate_hours"),
            "completed_at": values.get("completed_at"),
        }

    commits = dict(store.rows(f"SELECT version, committed_at FROM _quiver_commits WHERE version > {start}"))
    rows = table.to_pylist()
    for row in rows:
        assert micros(row.pop("_committed_at").replace(tzinfo=None)) == commits[row["_version"]]
    assert [(r.pop("_version"), r.pop("_op"), r) for r in rows] == [
        (a.commit_version, "insert", written("SUB-FLIGHT-A", id_a, status="blocked", priority=1, estimate_hours=2.5)),
        (c.commit_version, "insert", written("SUB-FLIGHT-C", id_c, status="blocked", priority=2)),
        # An update carries the after image, a delete the before image.
        (
            moved.commit_version,
            "update",
            written("SUB-FLIGHT-A", id_a, status="done", priority=1, estimate_hours=2.5, completed_at=later),
        ),
        (gone.commit_version, "delete", written("SUB-FLIGHT-C", id_c, status="blocked", priority=2)),
    ]


def test_flight_snapshot_with_a_projection(writable_server, store):
    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        version = clock(store)
        truth = store.rows(f"SELECT id, status FROM tasks WHERE {FILTER} ORDER BY id")
        body = {"tables": ["tasks"], "filter": FILTER, "snapshot": True, "columns": ["id", "status"]}
        follow = flight_subscribe(client, body)
        try:
            follow.wait(
                lambda f: f.rows() >= len(truth) and f.checkpoint() >= version,
                f"{len(truth)} snapshot rows and a checkpoint at {version}",
            )
            time.sleep(2 * PROGRESS_MS / 1000)
            table = follow.table()
        finally:
            follow.cancel()
    finally:
        client.close()
    assert table.schema.names == ["_version", "_op", "_committed_at", "id", "status"]
    rows = table.to_pylist()
    assert {(r["_version"], r["_op"]) for r in rows} == {(version, "snapshot")}
    assert sorted((r["id"], r["status"]) for r in rows) == truth


def test_flight_latest_start_sends_only_later_changes(writable_server, mutations, store):
    feature = some_feature(store)
    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        before = clock(store)
        follow = flight_subscribe(client, {"tables": ["tasks"], "latest": True, "columns": ["id", "key"]})
        try:
            follow.wait(lambda f: f.checkpoint() >= before, f"a checkpoint at {before}")
            written = mutations.insert("tasks", [task("SUB-FLIGHT-LATEST", feature)])
            follow.wait(lambda f: f.checkpoint() >= written.commit_version, f"a checkpoint at {written.commit_version}")
            table = follow.table()
        finally:
            follow.cancel()
    finally:
        client.close()
    assert table.schema.names == ["_version", "_op", "_committed_at", "id", "key"]
    assert [(r["_version"], r["_op"], r["id"], r["key"]) for r in table.to_pylist()] == [
        (written.commit_version, "insert", new_id(written), "SUB-FLIGHT-LATEST")
    ]


@pytest.mark.parametrize(
    "body, named",
    [
        ({"tables": ["tasks"], "filter": "status = = 1"}, None),
        ({"tables": ["tasks"], "filter": "no_such_column = 1"}, "no_such_column"),
        ({"tables": ["no_such_table"]}, "no_such_table"),
        ({"tables": ["tasks"], "columns": ["no_such_column"]}, "no_such_column"),
        ({"tables": ["tasks", "features"]}, None),
        ({"tables": []}, None),
    ],
    ids=["malformed-filter", "filter-unknown-column", "unknown-table", "unknown-column", "two-tables", "no-tables"],
)
def test_flight_subscribe_refuses_a_bad_request(writable_server, store, body, named):
    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        version = clock(store)
        with pytest.raises((flight.FlightError, pa.ArrowException)) as raised:
            action = flight.Action("subscribe", json.dumps(body).encode())
            list(client.do_action(action, flight.FlightCallOptions(timeout=30)))
        message = str(raised.value)
        if named:
            assert named in message
        elif "filter" in body:
            assert "filter" in message.lower() or body["filter"] in message, message
        assert clock(store) == version
    finally:
        client.close()


# --- metrics ----------------------------------------------------------------------------

METRICS = [
    "quiver_subscriptions_active",
    "quiver_subscription_events_delivered_total",
    "quiver_subscription_catchup_reads_total",
    "quiver_subscription_lag_versions_max",
    "quiver_change_log_latest_version",
]


def metrics(server) -> dict[str, float]:
    """Prometheus samples summed over labels, by metric name."""
    response = requests.get(f"{server.http_url}/metrics", timeout=10)
    assert response.status_code == 200
    values = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        values[name] = values.get(name, 0.0) + float(value)
    return values


def wait_metrics(server, condition, what: str, timeout: float = 10) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = metrics(server)
        if condition(values):
            return values
        assert time.monotonic() < deadline, f"metrics never showed {what}: " + str(
            {k: v for k, v in values.items() if "subscri" in k or "change_log" in k}
        )
        time.sleep(0.2)


def test_metrics_count_subscribers_and_deliveries(writable_server, subscriptions, mutations, store):
    feature = some_feature(store)
    start = clock(store)
    with subscriptions.open(from_version=start) as sub:
        sub.wait(lambda s: s.progresses, "a first Progress", timeout=10)
        opened = wait_metrics(
            writable_server, lambda m: m.get("quiver_subscriptions_active", 0) >= 1, "an active subscription"
        )
        for name in METRICS:
            assert name in opened, f"{name} is exported"
        last = None
        for i in range(3):
            last = mutations.insert("tasks", [task(f"SUB-METRICS-{i}", feature)]).commit_version
        sub.wait_progress(last)
        after = wait_metrics(
            writable_server,
            lambda m: m["quiver_subscription_events_delivered_total"]
            >= opened["quiver_subscription_events_delivered_total"] + 3
            and m["quiver_change_log_latest_version"] >= last,
            "3 more delivered events and the latest version",
        )
        assert after["quiver_subscription_lag_versions_max"] >= 0
        assert after["quiver_subscription_catchup_reads_total"] >= 0
        active = after["quiver_subscriptions_active"]
    wait_metrics(
        writable_server,
        lambda m: m["quiver_subscriptions_active"] <= active - 1,
        "one subscription fewer after a cancel",
    )


def test_a_change_stream_carries_every_arrow_type_as_ingested(writable_server, store, writer):
    """Rows of every Arrow type a client ingests arrive on a Flight change stream with
    the table's own types and the values written (PostgreSQL keeps microseconds): the
    change log keeps what the read path reads."""
    from arrow_types import every_type_table, to_microseconds

    data = every_type_table()
    writer.cursor().adbc_ingest("every_type_feed", data.slice(0, 1), mode="create")
    start = clock(store)
    client = flight.FlightClient(writable_server.grpc_uri)
    try:
        follow = flight_subscribe(client, {"tables": ["every_type_feed"], "from_version": start})
        try:
            writer.cursor().adbc_ingest("every_type_feed", data, mode="append")
            follow.wait(lambda f: f.rows() >= data.num_rows, f"{data.num_rows} inserts")
            table = follow.table()
        finally:
            follow.cancel()
    finally:
        client.close()
    assert table.column("_op").to_pylist() == ["insert"] * data.num_rows
    changed = table.select(data.column_names).sort_by("n")
    for field in data.schema:
        got = changed.schema.field(field.name).type
        assert got == field.type, (field.name, got)
        expected = data.column(field.name).combine_chunks()
        if writable_server.kind == "postgres":
            expected = to_microseconds(expected)
        assert changed.column(field.name).combine_chunks().equals(expected), (
            field.name,
            changed.column(field.name).to_pylist(),
            expected.to_pylist(),
        )
