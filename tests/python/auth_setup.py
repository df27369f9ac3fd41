"""Credentials, certificates and raw wire helpers for the access-control tests
(test_auth.py): password hashes and tokens made by the `quiver` binary, JWTs minted
by hand (HS256 with hmac, RS256 with `openssl dgst`), a small PKI made with the
`openssl` CLI, the few Flight SQL protobuf messages the tests send encoded by hand,
and the mapping of each client's errors to gRPC status code names."""

import base64
import hashlib
import hmac
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from conftest import quiver_binary
from hostile_clients import _varint

OPENSSL = "/usr/bin/openssl"
FLIGHT_SERVICE = "/arrow.flight.protocol.FlightService"
SQL_TYPE_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."


# --- the quiver CLI -------------------------------------------------------------------


def run_quiver(*args, input=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [quiver_binary(), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def hash_password(password: str) -> str:
    """`quiver auth hash-password` with the password on stdin: the PHC string."""
    result = run_quiver("auth", "hash-password", input=password + "\n")
    assert result.returncode == 0, f"quiver auth hash-password failed ({result.returncode}):\n{result.stderr}"
    hashes = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("$argon2")]
    assert len(hashes) == 1, f"one PHC argon2 hash on stdout, got {result.stdout!r}"
    assert password not in result.stdout, "the password is not echoed"
    return hashes[0]


def new_token() -> tuple[str, str]:
    """`quiver auth new-token`: (token, sha256 hex) from its `token=` and `sha256=` lines."""
    result = run_quiver("auth", "new-token")
    assert result.returncode == 0, f"quiver auth new-token failed ({result.returncode}):\n{result.stderr}"
    values = dict(
        line.strip().split("=", 1) for line in result.stdout.splitlines() if "=" in line
    )
    assert "token" in values and "sha256" in values, f"token= and sha256= lines, got {result.stdout!r}"
    token, digest = values["token"], values["sha256"].lower()
    assert digest == hashlib.sha256(token.encode()).hexdigest(), "sha256= is the SHA-256 of the token"
    return token, digest


# --- JWTs -----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_input(header: dict, claims: dict) -> bytes:
    return (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(claims, separators=(",", ":")).encode())
    ).encode()


def jwt_hs256(secret: bytes, claims: dict) -> str:
    signing_input = _signing_input({"alg": "HS256", "typ": "JWT"}, claims)
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + b64url(signature)


def jwt_rs256(private_key: Path, claims: dict) -> str:
    signing_input = _signing_input({"alg": "RS256", "typ": "JWT"}, claims)
    signature = subprocess.run(
        [OPENSSL, "dgst", "-sha256", "-sign", str(private_key)],
        input=signing_input,
        capture_output=True,
        check=True,
    ).stdout
    return signing_input.decode() + "." + b64url(signature)


def jwt_unsigned(claims: dict) -> str:
    """An `alg: none` token: never acceptable."""
    return _signing_input({"alg": "none", "typ": "JWT"}, claims).decode() + "."


# --- a small PKI ----------------------------------------------------------------------

_REQ_CONFIG = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""


def _openssl(*args, cwd=None):
    result = subprocess.run([OPENSSL, *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed:\n{result.stderr}"
    return result


@dataclass
class Leaf:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> str:
        return self.cert.read_text()

    @property
    def key_pem(self) -> str:
        return self.key.read_text()


class Pki:
    """A test CA with a server certificate (SAN IP:127.0.0.1, DNS:localhost), client
    certificates, a second unrelated CA, and an RSA key pair for RS256 JWTs."""

    def __init__(self, directory: Path):
        self.dir = directory
        (directory / "req.cnf").write_text(_REQ_CONFIG)
        self.ca = self._ca("ca", "Quiver Test CA")
        self.other_ca = self._ca("other-ca", "Unrelated CA")
        self.server = self._leaf("server", "quiver-server", self.ca, "serverAuth", "IP:127.0.0.1,DNS:localhost")
        self.reporter = self._leaf("reporter", "reporter", self.ca, "clientAuth")
        self.stranger = self._leaf("stranger", "stranger", self.ca, "clientAuth")
        # CN=reporter, but signed by a CA the server does not trust.
        self.rogue_reporter = self._leaf("rogue-reporter", "reporter", self.other_ca, "clientAuth")
        self.jwt_private = directory / "jwt-rsa.key"
        self.jwt_public = directory / "jwt-rsa.pub.pem"
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(self.jwt_private))
        _openssl("pkey", "-in", str(self.jwt_private), "-pubout", "-out", str(self.jwt_public))
        self.other_jwt_private = directory / "other-rsa.key"
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(self.other_jwt_private))

    def _key(self, name: str) -> Path:
        key = self.dir / f"{name}.key"
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        return key

    def _ca(self, name: str, cn: str) -> Leaf:
        key = self._key(name)
        cert = self.dir / f"{name}.pem"
        _openssl(
            "req", "-new", "-x509", "-key", str(key), "-out", str(cert), "-days", "3",
            "-subj", f"/CN={cn}", "-config", str(self.dir / "req.cnf"), "-extensions", "v3_ca",
        )
        return Leaf(cert, key)

    def _leaf(self, name: str, cn: str, ca: Leaf, usage: str, san: str | None = None) -> Leaf:
        key = self._key(name)
        csr = self.dir / f"{name}.csr"
        cert = self.dir / f"{name}.pem"
        ext = self.dir / f"{name}.ext"
        lines = [
            "basicConstraints = critical,CA:FALSE",
            "keyUsage = critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage = {usage}",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        if san:
            lines.append(f"subjectAltName = {san}")
        ext.write_text("\n".join(lines) + "\n")
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={cn}", "-config", str(self.dir / "req.cnf"))
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", str(random.randrange(1, 2**62)), "-days", "2", "-sha256",
            "-out", str(cert), "-extfile", str(ext),
        )
        return Leaf(cert, key)


# --- credentials and auth files -------------------------------------------------------

PASSWORDS = {
    # "alice:" + password is 19 bytes: its base64 needs padding (the unpadded test).
    "alice": "alice-reads-7",
    "bob": "bob-writes-42",
    "carol": "carol-administers",
}
ROLES = {"alice": "read", "bob": "write", "carol": "admin"}
ISSUER = "quiver-tests"
AUDIENCE = "quiver"


@dataclass
class Credentials:
    """Everything the auth files reference, made once per session."""

    dir: Path
    pki: Pki
    hashes: dict
    token: str
    token_sha256: str
    jwt_secret: bytes
    jwt_secret_file: Path
    token_secret_file: Path
    main_auth_file: Path = field(init=False)
    tls_auth_file: Path = field(init=False)

    def __post_init__(self):
        self.main_auth_file = self.dir / "auth.toml"
        self.tls_auth_file = self.dir / "auth-tls.toml"
        common = self._common()
        self.main_auth_file.write_text(
            common
            + "\n[jwt]\n"
            + 'algorithm = "HS256"\n'
            + f"secret_file = {json.dumps(str(self.jwt_secret_file))}\n"
            + f"issuer = {json.dumps(ISSUER)}\n"
            + f"audience = {json.dumps(AUDIENCE)}\n"
        )
        self.tls_auth_file.write_text(
            common
            + "\n[jwt]\n"
            + 'algorithm = "RS256"\n'
            + f"public_key_file = {json.dumps(str(self.pki.jwt_public))}\n"
            + f"issuer = {json.dumps(ISSUER)}\n"
            + f"audience = {json.dumps(AUDIENCE)}\n"
            + 'role_claim = "roles"\n'
            + "\n[[certificates]]\n"
            + 'common_name = "reporter"\n'
            + 'role = "read"\n'
        )

    def _common(self) -> str:
        text = "token_ttl_s = 3600\n" + f"token_secret_file = {json.dumps(str(self.token_secret_file))}\n"
        for name, role in ROLES.items():
            text += (
                "\n[[users]]\n"
                + f"name = {json.dumps(name)}\n"
                + f"role = {json.dumps(role)}\n"
                + f"password_hash = {json.dumps(self.hashes[name])}\n"
            )
        text += (
            "\n[[tokens]]\n"
            + 'name = "ingest-service"\n'
            + 'role = "write"\n'
            + f"sha256 = {json.dumps(self.token_sha256)}\n"
        )
        return text

    # JWT claims.
    def claims(self, sub: str, role, *, exp_in: int = 3600, **overrides) -> dict:
        now = int(time.time())
        claims = {"sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + exp_in}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def hs256(self, sub: str, role, **kwargs) -> str:
        return jwt_hs256(self.jwt_secret, self.claims(sub, role, **kwargs))

    def expired_jwt(self) -> str:
        # An admin token an hour past its expiry: the role must not matter.
        return self.hs256("carol-jwt", "admin", exp_in=-3600, iat=int(time.time()) - 7200)

    def rs256(self, sub: str, roles, key: Path | None = None, **kwargs) -> str:
        claims = self.claims(sub, None, **kwargs)
        claims["roles"] = roles
        return jwt_rs256(key or self.pki.jwt_private, claims)


def make_credentials(directory: Path) -> Credentials:
    pki = Pki(directory)
    hashes = {name: hash_password(password) for name, password in PASSWORDS.items()}
    token, digest = new_token()
    jwt_secret = b"quiver-test-hs256-secret-0123456789abcdef-XYZ"
    jwt_secret_file = directory / "jwt.secret"
    # A trailing newline, which the server trims.
    jwt_secret_file.write_bytes(jwt_secret + b"\n")
    token_secret_file = directory / "token.secret"
    token_secret_file.write_bytes(b"quiver-issued-token-secret-shared-by-replicas-0123456789\n")
    return Credentials(directory, pki, hashes, token, digest, jwt_secret, jwt_secret_file, token_secret_file)


def basic(user: str, password: str, *, padded: bool = True) -> str:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return "Basic " + (encoded if padded else encoded.rstrip("="))


# --- protobuf by hand -----------------------------------------------------------------


def pb_bytes(number: int, data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def pb_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def pb_parse(data: bytes) -> dict:
    """Field number to the list of its values (ints for varints, bytes otherwise)."""
    fields: dict = {}
    i = 0

    def read_varint():
        nonlocal i
        shift = result = 0
        while True:
            byte = data[i]
            i += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while i < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = read_varint()
        elif wire == 2:
            length = read_varint()
            value = data[i : i + length]
            i += length
        elif wire == 1:
            value = data[i : i + 8]
            i += 8
        elif wire == 5:
            value = data[i : i + 4]
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def any_pack(message: str, payload: bytes) -> bytes:
    return pb_bytes(1, SQL_TYPE_PREFIX + message) + (pb_bytes(2, payload) if payload else b"")


def any_unpack(data: bytes) -> tuple[str, bytes]:
    fields = pb_parse(data)
    type_url = fields.get(1, [b""])[0].decode()
    # "type.googleapis.com/arrow.flight.protocol.sql.X" -> "X"
    return type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1], fields.get(2, [b""])[0]


def statement_query(sql: str, transaction_id: bytes | None = None) -> bytes:
    return any_pack("CommandStatementQuery", pb_bytes(1, sql) + (pb_bytes(2, transaction_id) if transaction_id else b""))


def statement_update(sql: str, transaction_id: bytes | None = None) -> bytes:
    return any_pack("CommandStatementUpdate", pb_bytes(1, sql) + (pb_bytes(2, transaction_id) if transaction_id else b""))


def begin_transaction_action() -> flight.Action:
    return flight.Action("BeginTransaction", any_pack("ActionBeginTransactionRequest", b""))


def end_transaction_action(transaction_id: bytes, commit: bool) -> flight.Action:
    # EndTransaction: END_TRANSACTION_COMMIT = 1, END_TRANSACTION_ROLLBACK = 2.
    body = pb_bytes(1, transaction_id) + pb_varint(2, 1 if commit else 2)
    return flight.Action("EndTransaction", any_pack("ActionEndTransactionRequest", body))


# --- pyarrow Flight SQL calls ---------------------------------------------------------


def call_options(authorization: str | None = None, timeout: float = 60) -> flight.FlightCallOptions:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return flight.FlightCallOptions(headers=headers, timeout=timeout)


def flight_query(client, sql: str, options, transaction_id: bytes | None = None) -> pa.Table:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(statement_query(sql, transaction_id)), options)
    tables = [client.do_get(endpoint.ticket, options).read_all() for endpoint in info.endpoints]
    return pa.concat_tables(tables) if tables else info.schema.empty_table()


def flight_update(client, sql: str, options, transaction_id: bytes | None = None) -> int:
    descriptor = flight.FlightDescriptor.for_command(statement_update(sql, transaction_id))
    writer, reader = client.do_put(descriptor, pa.schema([]), options)
    writer.done_writing()
    metadata = reader.read()
    writer.close()
    assert metadata is not None, "DoPut answers a DoPutUpdateResult"
    return pb_parse(metadata.to_pybytes()).get(1, [0])[0]


def begin_transaction(client, options) -> bytes:
    results = list(client.do_action(begin_transaction_action(), options))
    assert len(results) == 1, f"one BeginTransaction result, got {len(results)}"
    name, payload = any_unpack(results[0].body.to_pybytes())
    assert name == "ActionBeginTransactionResult", name
    transaction_id = pb_parse(payload).get(1, [b""])[0]
    assert transaction_id, "a non-empty transaction id"
    return transaction_id


def end_transaction(client, transaction_id: bytes, commit: bool, options):
    list(client.do_action(end_transaction_action(transaction_id, commit), options))


# --- raw gRPC -------------------------------------------------------------------------


def grpc_handshake(channel, authorization: str) -> str | None:
    """A Flight Handshake carrying `authorization` and no messages (as the Go and C++
    clients send it); the `authorization` header the server answers with."""
    handshake = channel.stream_stream(f"{FLIGHT_SERVICE}/Handshake")
    call = handshake(iter(()), metadata=[("authorization", authorization)], timeout=30)
    for _ in call:
        pass
    headers = dict(call.initial_metadata() or ())
    headers.update(dict(call.trailing_metadata() or ()))
    return headers.get("authorization")


def grpc_health(channel, metadata=None) -> int:
    """grpc.health.v1.Health/Check of the whole server: the status (1 = SERVING)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    response = check(b"", metadata=metadata, timeout=30)
    return pb_parse(response).get(1, [0])[0]


def grpc_get_flight_info(channel, sql: str, metadata=None, timeout=30):
    """GetFlightInfo of a query: (response bytes, call) or raises grpc.RpcError."""
    method = channel.unary_unary(f"{FLIGHT_SERVICE}/GetFlightInfo")
    descriptor = flight.FlightDescriptor.for_command(statement_query(sql)).serialize()
    return method.with_call(descriptor, metadata=metadata, timeout=timeout)


# --- error codes ----------------------------------------------------------------------

_GRPC_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def adbc_code(error) -> str:
    """The gRPC code name of an ADBC Flight SQL error (the driver's vendor code is the
    gRPC code)."""
    vendor = getattr(error, "vendor_code", None)
    if isinstance(vendor, int) and vendor in _GRPC_NAMES and vendor != 0:
        return _GRPC_NAMES[vendor]
    text = str(error)
    for name, code in [
        ("(Unauthenticated;", "UNAUTHENTICATED"),
        ("(PermissionDenied;", "PERMISSION_DENIED"),
        ("(NotFound;", "NOT_FOUND"),
        ("(ResourceExhausted;", "RESOURCE_EXHAUSTED"),
        ("(Unavailable;", "UNAVAILABLE"),
    ]:
        if name in text:
            return code
    return f"ADBC:{getattr(error, 'status_code', '?')}"


def pyarrow_code(error) -> str:
    text = str(error).lower()
    if isinstance(error, flight.FlightUnauthenticatedError):
        return "UNAUTHENTICATED"
    if isinstance(error, flight.FlightUnauthorizedError):
        return "PERMISSION_DENIED"
    if isinstance(error, flight.FlightUnavailableError):
        return "UNAVAILABLE"
    if isinstance(error, flight.FlightTimedOutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(error, flight.FlightCancelledError):
        return "CANCELLED"
    if isinstance(error, pa.ArrowKeyError) or "not found error" in text:
        return "NOT_FOUND"
    if "resource exhausted" in text:
        return "RESOURCE_EXHAUSTED"
    if "already exists" in text:
        return "ALREADY_EXISTS"
    if isinstance(error, pa.ArrowNotImplementedError):
        return "UNIMPLEMENTED"
    if isinstance(error, pa.ArrowInvalid):
        return "INVALID_ARGUMENT"
    return f"PYARROW:{type(error).__name__}"


HTTP_CODES = {200: "OK", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED"}


@dataclass
class Outcome:
    code: str
    message: str = ""
    value: object = None

    def __str__(self):
        return f"{self.code}: {self.message[:600]}"


def capture(call) -> Outcome:
    """Runs `call()`: OK with its value, or the gRPC code name of what it raised."""
    import adbc_driver_manager

    try:
        return Outcome("OK", value=call())
    except adbc_driver_manager.Error as error:
        return Outcome(adbc_code(error), str(error))
    except pa.ArrowException as error:
        return Outcome(pyarrow_code(error), str(error))
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "")


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Launched:
    """A `quiver` process whose output is collected; unlike conftest's Server it never
    blocks: `wait_serving` answers "serving", "exited" or "timeout"."""

    def __init__(self, args, env_drop=(), env=None):
        environment = {k: v for k, v in os.environ.items() if k not in env_drop and not k.startswith("QUIVER_AUTH")}
        environment.update({"QUIVER_LOG": "info", **(env or {})})
        self.process = subprocess.Popen(
            [quiver_binary(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        self.log: list[str] = []
        self.grpc_addr = self.http_addr = None
        self._serving = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.process.stdout:
            self.log.append(line)
            match = re.search(r"serving grpc_addr=(\S+) http_addr=(\S+)", line)
            if match:
                self.grpc_addr, self.http_addr = match.group(1), match.group(2)
                self._serving.set()

    def wait_serving(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._serving.is_set():
                return "serving"
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the drain thread take the last lines
                return "serving" if self._serving.is_set() else "exited"
            time.sleep(0.05)
        return "timeout"

    def wait_exit(self, timeout: float) -> int | None:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        time.sleep(0.2)
        return code

    @property
    def text(self) -> str:
        return "".join(self.log)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
