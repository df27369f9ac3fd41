"""Python modules for Quiver's gRPC API, generated at run time from the `.proto` files.

The examples keep no generated code: the first call runs `grpc_tools.protoc` (from
the grpcio-tools package) on `proto/` at the root of the Quiver repository, or on the
directory named by QUIVER_PROTO_DIR, and imports the result:

    import quiver_stubs

    mutations_pb2, mutations_pb2_grpc = quiver_stubs.load("mutations")
    subscriptions_pb2, subscriptions_pb2_grpc = quiver_stubs.load("subscriptions")
"""

import functools
import importlib
import os
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(os.environ.get("QUIVER_PROTO_DIR", Path(__file__).resolve().parents[2] / "proto"))
PROTOS = ["quiver/v1/mutations.proto", "quiver/v1/subscriptions.proto"]


@functools.cache
def _generate() -> dict:
    """Runs protoc once per process and imports every generated module."""
    with tempfile.TemporaryDirectory(prefix="quiver_stubs_") as out:
        status = protoc.main(
            ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", *PROTOS]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {PROTO_DIR} (exit status {status})")
        # The generated modules import each other as `quiver.v1.<name>`.
        sys.path.insert(0, out)
        try:
            names = [f"{Path(p).stem}_{suffix}" for p in PROTOS for suffix in ("pb2", "pb2_grpc")]
            return {name: importlib.import_module(f"quiver.v1.{name}") for name in names}
        finally:
            sys.path.remove(out)


def load(service: str):
    """(messages module, stubs module) of `service`: "mutations" or "subscriptions"."""
    modules = _generate()
    return modules[f"{service}_pb2"], modules[f"{service}_pb2_grpc"]
