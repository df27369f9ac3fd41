"""What the Python benchmark harnesses share: a `quiver serve` of their own over a
SQLite file, and percentiles."""

import os
import re
import subprocess
import threading


class Server:
    """`quiver serve` on `db_path` with extra flags `args` and environment `env`, on
    free ports (`grpc`, `http` are its addresses)."""

    def __init__(self, binary, db_path, *args, env=None):
        self.process = subprocess.Popen(
            [binary, "serve", "--db", f"sqlite://{db_path}", "--grpc-addr", "127.0.0.1:0",
             "--http-addr", "127.0.0.1:0", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "QUIVER_LOG": "warn,quiver_server=info", **(env or {})},
        )
        for line in self.process.stderr:
            match = re.search(r"serving grpc_addr=(\S+) http_addr=(\S+)", line)
            if match:
                self.grpc, self.http = match.group(1), match.group(2)
                break
        else:
            raise RuntimeError("quiver serve exited before serving")
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
