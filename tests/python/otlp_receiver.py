"""An in-process OpenTelemetry trace receiver (OTLP over gRPC) for the tests.

`compile_otlp_protos(out)` generates the Python modules of the OTLP trace protos from
the sources of the `opentelemetry-proto` crate the server is built with (its version
read from Cargo.lock, its sources from the cargo registry), so the receiver speaks
exactly the protocol the server's exporter sends. `Receiver` implements
`TraceService.Export` on 127.0.0.1:<free port> and collects every span it is sent."""

import glob
import importlib
import os
import re
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
PROTO_FILES = [
    "opentelemetry/proto/collector/trace/v1/trace_service.proto",
    "opentelemetry/proto/trace/v1/trace.proto",
    "opentelemetry/proto/common/v1/common.proto",
    "opentelemetry/proto/resource/v1/resource.proto",
]

# opentelemetry.proto.trace.v1.Span.SpanKind
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 1, 2, 3, 4, 5
KIND_NAMES = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def otlp_proto_version() -> str:
    """The version of the opentelemetry-proto crate in Cargo.lock."""
    text = (ROOT / "Cargo.lock").read_text()
    match = re.search(r'name = "opentelemetry-proto"\nversion = "([^"]+)"', text)
    if not match:
        raise RuntimeError("Cargo.lock has no opentelemetry-proto package")
    return match.group(1)


def otlp_proto_root() -> Path:
    """The crate's proto sources in the cargo registry."""
    version = otlp_proto_version()
    cargo_home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    pattern = f"{cargo_home}/registry/src/*/opentelemetry-proto-{version}/src/proto/opentelemetry-proto"
    found = sorted(glob.glob(pattern))
    if not found:
        raise RuntimeError(f"no sources of opentelemetry-proto {version} at {pattern}")
    return Path(found[-1])


def compile_otlp_protos(out: Path) -> dict:
    """Generates the trace service modules into `out`; returns
    {"trace_service_pb2": ..., "trace_service_pb2_grpc": ...}."""
    root = otlp_proto_root()
    protoc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(root),
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *PROTO_FILES,
        ],
        capture_output=True,
        text=True,
    )
    if protoc.returncode != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({protoc.returncode}):\n{protoc.stdout}{protoc.stderr}")
    sys.path.insert(0, str(out))
    try:
        base = "opentelemetry.proto.collector.trace.v1"
        return {
            "trace_service_pb2": importlib.import_module(f"{base}.trace_service_pb2"),
            "trace_service_pb2_grpc": importlib.import_module(f"{base}.trace_service_pb2_grpc"),
        }
    finally:
        sys.path.remove(str(out))


def any_value(value):
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


@dataclass
class Span:
    """One exported span, in plain Python values (ids as lowercase hex)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict
    links: list  # [(trace_id, span_id)]
    status_code: int
    resource: dict
    scope: str
    start_ns: int
    end_ns: int
    events: list = field(default_factory=list)

    def __repr__(self):
        parent = self.parent_span_id or "-"
        return (
            f"<{self.name} {KIND_NAMES.get(self.kind, self.kind)} trace={self.trace_id} "
            f"span={self.span_id} parent={parent} attrs={self.attributes} links={self.links}>"
        )


class Receiver:
    """A TraceService on `addresses` (default 127.0.0.1 on a free port); `spans` holds
    everything exported to it. Binding an address that is taken raises OSError."""

    def __init__(self, modules: dict, addresses=("127.0.0.1:0",)):
        pb, pb_grpc = modules["trace_service_pb2"], modules["trace_service_pb2_grpc"]
        self.spans: list[Span] = []
        self.requests = 0
        self._cond = threading.Condition()
        receiver = self

        class Service(pb_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._collect(request)
                return pb.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        ports = []
        for address in addresses:
            try:
                port = self._server.add_insecure_port(address)
            except RuntimeError as err:  # grpcio raises when the port cannot be bound
                self._server.stop(grace=None)
                raise OSError(f"cannot listen on {address}: {err}") from err
            if not port:
                self._server.stop(grace=None)
                raise OSError(f"cannot listen on {address}")
            ports.append(port)
        self.port = ports[0]
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _collect(self, request):
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: any_value(a.value) for a in span.attributes},
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            status_code=span.status.code,
                            resource=resource,
                            scope=scope_spans.scope.name,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            events=[e.name for e in span.events],
                        )
                    )
        with self._cond:
            self.requests += 1
            self.spans.extend(got)
            self._cond.notify_all()

    def snapshot(self) -> list[Span]:
        with self._cond:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_for(self, condition, what: str, timeout: float = 30) -> list[Span]:
        """Waits until `condition(spans)` is true of the spans received so far; returns
        them. Fails with what arrived on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                spans = list(self.spans)
                if condition(spans):
                    return spans
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({(s.name, s.trace_id) for s in spans})
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; received {len(spans)} spans: {names}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def stop(self):
        self._server.stop(grace=None)
