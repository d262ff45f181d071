"""Delivery of records to the recorder, on one background thread.

The test thread only appends record tuples to ``Sender.queue`` (a deque:
appending is atomic and never blocks). The sender thread runs an asyncio loop
with grpc's asyncio API: every ``FLUSH_INTERVAL`` it numbers what arrived
(seq 1, 2, 3...) and hands batches to the stream's writer task; a reader task
takes the acks. One Python thread, woken only by its timer and by network
events, takes the GIL from the tests far less often than grpc's blocking API
with its helper threads that poll every 100 ms.

Invariants:

* Everything not acknowledged stays in memory (``_inflight`` was put on the
  current stream, ``_unsent`` was not) until an ack covers it; after a
  reconnect ``_inflight`` is sent again, and the server stores each seq once.
* Memory is bounded: past ``MAX_HELD`` outcomes or ``MAX_HELD_BYTES`` the
  sender stops streaming for good and writes what it holds, and everything
  after it, to the spool file (the server rejects a gap in seqs, so streaming
  cannot resume past spooled outcomes).
* At the end, what is not acknowledged within the timeout goes to the spool
  file, framed by the session's start and finish lines.
* Failover: the sender is on one of the recorder addresses at a time. When it
  cannot reach that one or loses it, it moves to the next (round robin) at
  once and sends it everything not acknowledged; only after every address has
  failed in a row does it wait (``BACKOFF_FIRST`` doubling up to
  ``BACKOFF_MAX``) before the next round. The recorders share one database,
  so an ack from any of them counts, and a seq stored by one is stored once.
* Dependencies (``--mcp-deps``): an outcome names unit keys; each batch
  declares in ``units`` every unit its outcomes name that no acknowledged
  batch declared (``_stored_units``). Declarations of batches not
  acknowledged count for nothing after a reconnect or a move to another
  address: those outcomes are sent again, and so are their units. The units
  themselves are in the dict shared with the reporter (key -> unit tuple),
  which is only ever added to.
* At most one warning line is produced per run (``warning``); the reporter
  prints it from the main thread, where pytest's output capture is not active.
  It is set once the sender knows where the run goes: with several addresses,
  after it moved to one that answers or after all of them failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import _environment
from . import _records as R
from ._spool import SpoolFile, default_dir, rfc3339

# How often the sender thread wakes to number, batch and send what arrived.
# Each wake-up, and each batch and ack it causes, takes the GIL from the tests
# for a moment: on 10,000 trivial tests (2 cores) a 10 ms cadence made the run
# about 20 % slower; a batch and its ack cost the sender thread about as much
# CPU as building a few hundred outcomes, so at 250 ms (40 batches for a 10 s
# run instead of 100) the thread uses about a third less CPU than at 100 ms.
# Batches hold at most MAX_BATCH outcomes each; a live watcher sees results
# 0.25 s late (MCP subscribers are told at most five times a second anyway).
FLUSH_INTERVAL = 0.25
MAX_BATCH = 500
MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_HELD = 50_000
MAX_HELD_BYTES = 64 * 1024 * 1024
RPC_TIMEOUT = 2.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
# Characters per text field; the server bounds further. Five fields of this,
# even at 4 bytes a character, stay far below the server's 16 MiB message limit.
MAX_TEXT = 256 * 1024
MAX_ID_BYTES = 4096  # the server's limit for nodeid, file and worker
MAX_MARKERS = 256
MAX_MARKER_BYTES = 1024
RECORD_OVERHEAD = 200  # rough bytes of a record beyond its text fields
DEP_BYTES = 9  # bytes of one dependency key on the wire (and a little more spooled)
UNIT_OVERHEAD = 64  # rough bytes of a unit declaration beyond its path and name
MAX_PROPERTIES = 1000  # per outcome sent; the recorder keeps 64
MAX_PROPERTY_CHARS = 8192  # per name or value sent; the recorder keeps 4 KiB

OUTCOMES = {"passed": 1, "failed": 2, "skipped": 3, "error": 4, "xfailed": 5, "xpassed": 6}
UNIT_KINDS = {"function": 1, "class": 2, "module": 3, "file": 4}
PHASES = {None: 0, "collect": 1, "setup": 2, "call": 3, "teardown": 4}
# Outcome fields set only when not empty: (field, record index).
_OPTIONAL_TEXT = (
    ("message", R.MESSAGE),
    ("longrepr", R.LONGREPR),
    ("stdout", R.STDOUT),
    ("stderr", R.STDERR),
    ("log", R.LOG),
)
# What a passing outcome sends when the recorder does not keep its output.
_PASSING_TEXT = (("message", R.MESSAGE), ("longrepr", R.LONGREPR))

_TRUE = {"1", "true", "yes", "on"}


def _keep_output_from_env() -> bool:
    """PYTEST_MCP_KEEP_PASSING_OUTPUT, for a run whose recorder never answered."""
    return os.environ.get("PYTEST_MCP_KEEP_PASSING_OUTPUT", "").strip().lower() in _TRUE

# Codes after which trying again cannot help: the rest goes to the spool file.
_PERMANENT = {
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "ALREADY_EXISTS",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "UNIMPLEMENTED",
    "OUT_OF_RANGE",
    # The recorder's disk is full (or a message over its size limit).
    "RESOURCE_EXHAUSTED",
}

CONNECTING = "connecting"
STREAMING = "streaming"
SPOOLING = "spooling"


class Result:
    """What happened to a session's delivery, for the end-of-run line."""

    def __init__(self) -> None:
        self.outcomes = 0  # highest seq
        self.acked = 0
        self.finished = False  # FinishSession succeeded
        self.spool_path: Optional[Path] = None
        self.problem: Optional[str] = None
        #: The recorder address that acknowledged FinishSession.
        self.address: Optional[str] = None
        #: Every address refused the connection, every time: no recorder
        #: listened to this run (and none owns a database it could go to).
        self.nothing_listening = False


def _nanos(seconds: float, whole: int) -> int:
    """The fraction of ``seconds`` past ``whole`` in whole microseconds, as nanoseconds.

    Microseconds are the server's precision, so a repeated StartSession is identical.
    """
    return min(int(round((seconds - whole) * 1_000_000)), 999_999) * 1000


class Status(NamedTuple):
    """A gRPC error, classified once for the sender and the quarantine fetch."""

    #: The status code's name, e.g. ``UNAUTHENTICATED``.
    code: str
    #: What the recorder (or grpc) said, short enough for one line.
    details: str
    #: The connection was refused: nothing listens at the address, so no
    #: recorder saw the call. Only this allows storing a run locally.
    nothing_listening: bool

    @property
    def reached(self) -> bool:
        """Whether a recorder answered: every code but UNAVAILABLE and
        DEADLINE_EXCEEDED, which the network gives as well."""
        return self.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def status(error) -> Status:
    """The classified status of a grpc error."""
    code = error.code() if hasattr(error, "code") else None
    name = getattr(code, "name", "UNKNOWN")
    details = (error.details() if hasattr(error, "details") else None) or ""
    refused = (
        name == "UNAVAILABLE"
        and details.startswith("failed to connect to all addresses")
        and ("Connection refused" in details or "actively refused" in details)
    )
    if refused:
        # grpc's own text for a recorder that is not listening is three lines'
        # worth; a message the recorder sent (its database is away) is kept.
        # Any other failure to connect (a TLS listener, a timeout) may be a
        # recorder: it does not count as nothing listening.
        details = "connection refused"
    return Status(name, details, refused)


def _first_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    """Keeps head and tail (where the error usually is) around a marker."""
    cut = len(text) - limit
    half = limit // 2
    return f"{text[:half]}\n...[pytest-mcp: truncated {cut} characters]...\n{text[-half:]}"


def _clip_id(text: str) -> str:
    """Shortens an identifier past the server's limit, keeping it unique with a hash."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_ID_BYTES:
        return text
    digest = hashlib.sha1(data).hexdigest()[:16]
    head = data[: MAX_ID_BYTES - 64].decode("utf-8", "ignore")
    return f"{head}...[pytest-mcp: cut, sha1 {digest}]"


def _valid_utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def sanitize(r: Tuple) -> Tuple[Tuple, int]:
    """Returns the record within the server's limits, and its rough size in bytes."""
    text = (
        len(r[R.MESSAGE]) + len(r[R.LONGREPR]) + len(r[R.STDOUT]) + len(r[R.STDERR]) + len(r[R.LOG])
    )
    duration = r[R.DURATION]
    if (
        text <= MAX_TEXT
        and len(r[R.NODEID]) <= MAX_ID_BYTES // 4
        and len(r[R.FILE]) <= MAX_ID_BYTES // 4
        and 0.0 <= duration < 1e12
        and len(r[R.MARKERS]) <= 16
        and len(r[R.WORKER]) <= 64
        and len(r[R.SUBTEST]) <= MAX_ID_BYTES // 4
        and not r[R.PROPERTIES]
    ):
        deps = r[R.DEPS]
        # nearly always: nothing can be over a limit
        return r, RECORD_OVERHEAD + text + (DEP_BYTES * len(deps) if deps else 0)
    fix = list(r)
    size = RECORD_OVERHEAD + (DEP_BYTES * len(r[R.DEPS]) if r[R.DEPS] else 0)
    for index in (R.MESSAGE, R.LONGREPR, R.STDOUT, R.STDERR, R.LOG):
        if len(fix[index]) > MAX_TEXT:
            fix[index] = _clip(fix[index])
        size += len(fix[index])
    for index in (R.NODEID, R.FILE, R.WORKER, R.SUBTEST):
        fix[index] = _clip_id(fix[index])
    # The recorder keeps 64 properties and cuts long ones with a marker; this
    # only keeps one test's properties from outgrowing a message.
    fix[R.PROPERTIES] = tuple(
        (name[:MAX_PROPERTY_CHARS], value[:MAX_PROPERTY_CHARS])
        for name, value in r[R.PROPERTIES][:MAX_PROPERTIES]
    )
    size += sum(len(n) + len(v) for n, v in fix[R.PROPERTIES])
    if not 0.0 <= duration < 1e12:  # negative, NaN or infinite
        fix[R.DURATION] = 0.0
    fix[R.MARKERS] = tuple(
        m.encode("utf-8", "replace")[:MAX_MARKER_BYTES].decode("utf-8", "ignore")
        for m in r[R.MARKERS][:MAX_MARKERS]
    )
    return tuple(fix), size


class _Repaired(tuple):
    """A record after repair(), so a second failure is not retried."""

    repaired = True


def repair(r: Tuple) -> Tuple:
    """The record with lone surrogates (from undecodable bytes) replaced and numbers in range."""
    out = list(r)
    for _key, index in R.TEXT_FIELDS:
        out[index] = _valid_utf8(out[index])
    out[R.NODEID] = _valid_utf8(out[R.NODEID])
    out[R.MARKERS] = tuple(_valid_utf8(m) for m in out[R.MARKERS])
    out[R.PROPERTIES] = tuple((_valid_utf8(n), _valid_utf8(v)) for n, v in out[R.PROPERTIES])
    line = out[R.LINE]
    out[R.LINE] = line if line is None or 0 <= line < 2**32 else None
    out[R.ATTEMPT] = min(max(int(out[R.ATTEMPT]), 1), 2**32 - 1)
    return _Repaired(out)


class _Replica:
    """One recorder address, with its channel (opened idle: grpc connects on the first call)."""

    def __init__(self, address: str, tls_ca: Optional[bytes]) -> None:
        self.address = address
        # https:// (or a CA file) means TLS; http:// or no scheme, plaintext.
        self.tls = address.startswith("https://") or tls_ca is not None
        self.target = address.split("://", 1)[1] if "://" in address else address
        self.channel = None
        self.stub = None


class _Stream:
    """One StreamOutcomes call, with a writer task that sends queued batches and a
    reader task that takes the acks; runs on the sender's event loop."""

    def __init__(self, sender: "Sender", stub, metadata) -> None:
        self.ended = False
        self.error: Optional[BaseException] = None
        self._requests: "asyncio.Queue" = asyncio.Queue()
        self.call = stub.StreamOutcomes(metadata=metadata)
        self.writer = asyncio.ensure_future(self._write())
        self.reader = asyncio.ensure_future(self._read_acks(sender))

    def put(self, request) -> None:
        self._requests.put_nowait(request)

    def half_close(self) -> None:
        self._requests.put_nowait(None)

    async def _write(self) -> None:
        try:
            while True:
                request = await self._requests.get()
                if request is None:
                    await self.call.done_writing()
                    return
                await self.call.write(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The call failed; the reader gets its status.
            return

    async def _read_acks(self, sender: "Sender") -> None:
        try:
            while True:
                response = await self.call.read()
                if response is sender._grpc.aio.EOF:
                    break
                if response.acked_seq > sender._acked:
                    sender._acked = response.acked_seq
                    if sender._closing.is_set():
                        sender._wake.set()  # the end of the run is waiting for this
        except asyncio.CancelledError:
            self.error = self.error or ConnectionError("cancelled")
        except Exception as error:  # grpc.aio.AioRpcError, mostly
            self.error = error
        finally:
            self.ended = True
            sender._wake_soon()

    def cancel(self) -> None:
        self.call.cancel()
        self.writer.cancel()


class Sender:
    """Owns the connection to the recorder for one session; see the module docstring."""

    def __init__(
        self,
        *,
        addresses: Sequence[str],
        token: Optional[str],
        spool_dir: Optional[str],
        tls_ca: Optional[bytes] = None,
        timeout: float,
        session_id: str,
        started_at: float,
        environment: Dict[str, Any],
        units: Optional[Dict[int, tuple]] = None,
    ) -> None:
        """``units``: the units outcomes' dependencies name, by key (shared with
        the reporter, only ever added to); None when dependencies are not recorded."""
        self.queue: deque = deque()
        #: One line for the main thread to print, set at most once per run.
        self.warning: Optional[str] = None
        #: Whether the recorder keeps the captured output of passing tests:
        #: None until it said so (StartSession). The test thread reads it to
        #: skip collecting output nobody will keep; what is sent or spooled
        #: follows it, and without an answer PYTEST_MCP_KEEP_PASSING_OUTPUT.
        self.keep_passing_output: Optional[bool] = None
        if not addresses:
            raise ValueError("no recorder address")
        #: The recorder addresses, in the order they are tried.
        self.addresses = tuple(addresses)
        self.session_id = session_id
        self._tls_ca = tls_ca
        self._replicas = [_Replica(address, tls_ca) for address in self.addresses]
        self._current = 0  # index of the replica in use, or to be tried next
        # Why each address failed since the last one that answered (or since the start).
        self._round: List[str] = []
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._spool_dir = Path(spool_dir) if spool_dir else default_dir()
        self._timeout = timeout
        self._started_at = started_at
        self._environment = environment
        self._units = units
        self._stored_units: set = set()  # keys an acknowledged batch declared
        self._declared: deque = deque()  # (last seq of a batch on the stream, keys it declared)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._closing = threading.Event()
        self._lock = threading.Lock()  # guards the spool file and _done
        self._done = False
        self._thread: Optional[threading.Thread] = None

        self._mode = CONNECTING
        self._next_seq = 1
        self._acked = 0  # highest seq the server acknowledged
        self._inflight: deque = deque()  # (seq, record, size) on the current stream
        self._unsent: deque = deque()  # (seq, record, size) not on any stream yet
        self._held_bytes = 0
        self._stream: Optional[_Stream] = None
        self._session_started = False  # StartSession succeeded at least once
        #: None until a call went out; False while every one found nothing
        #: listening (connection refused); True once anything else happened,
        #: an answer, a refusal or a failure that may have been a recorder's.
        #: Set on the sender thread before the warning it explains.
        self.listening: Optional[bool] = None
        self._refused = False  # the server answered with a permanent error
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        self._connects_while_closing = 0
        self._acked_before_spool = 0  # what the server had acknowledged when spooling began
        self._spool: Optional[SpoolFile] = None
        self._summary: Optional[Dict[str, Any]] = None
        self._finished_at: Optional[float] = None
        self._deadline = 0.0
        self._problem: Optional[str] = None
        self._result = Result()
        self._grpc = None
        self._pb = None
        self._start_request = None

    # ---- main-thread API -------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pytest-mcp-sender", daemon=True)
        self._thread.start()

    @property
    def thread_ident(self) -> Optional[int]:
        """The sender thread's ident, once started."""
        return self._thread.ident if self._thread is not None else None

    def _wake_soon(self) -> None:
        """Ends the sender's current wait; callable from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop is already closed
            pass

    def close(self, summary: Optional[Dict[str, Any]]) -> Result:
        """Delivers what is left (waiting at most the timeout for acks), finishes the
        session and spools what was not acknowledged. ``summary`` None means pytest did
        not finish: no finish is sent or spooled."""
        self._summary = summary
        self._finished_at = time.time()
        self._deadline = time.monotonic() + self._timeout
        self._closing.set()
        self._wake_soon()
        thread = self._thread
        try:
            if thread is not None:
                # Each address may cost a StartSession and a FinishSession at the end.
                thread.join(self._timeout + 2 * len(self._replicas) * RPC_TIMEOUT + 5.0)
                if thread.is_alive():
                    self._note("the sender did not stop in time")
                    self._spool_everything()
            else:
                self._spool_everything()
        except KeyboardInterrupt:
            self._note("interrupted while waiting for the recorder")
            self._spool_everything()
        self._result.problem = self._problem
        self._result.nothing_listening = self.listening is False
        return self._result

    # ---- the sender thread ----------------------------------------------

    def _run(self) -> None:
        # A loop of our own, whatever event loop policy the tests install.
        loop = asyncio.SelectorEventLoop()
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as error:  # a bug here must not cost the results
            self._note(f"internal error: {_first_line(repr(error))}")
            self._spool_everything()
        finally:
            self._loop = None
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        self._loop = loop
        try:
            self._setup()
        except Exception as error:  # e.g. grpc missing or broken: spool instead
            self._give_up(f"cannot load grpc ({_first_line(str(error))})", refused=True)
        while True:
            closing = self._closing.is_set()
            self._drain()
            if self._mode == STREAMING:
                self._check_stream()
            if self._mode == CONNECTING and self._may_connect(closing):
                await self._connect()
            if self._mode == STREAMING:
                self._trim()
                self._send()
            if self._mode != SPOOLING and self._held() > 0:
                self._check_memory()
            if closing and self._close_now():
                break
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
        await self._finish()
        # Let cancelled stream tasks finish, so the loop closes without leftovers.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def _setup(self) -> None:
        import grpc
        import grpc.aio
        from google.protobuf.timestamp_pb2 import Timestamp

        from ._proto import recorder_pb2, recorder_pb2_grpc

        self._grpc = grpc
        self._pb = recorder_pb2
        self._Timestamp = Timestamp
        self._environment = _environment.complete(self._environment, deps=self._units is not None)
        options = [
            # Find a restarted server quickly instead of after grpc's default minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.enable_retries", 0),
        ]
        for replica in self._replicas:
            if replica.tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
                replica.channel = grpc.aio.secure_channel(
                    replica.target, credentials, options=options
                )
            else:
                replica.channel = grpc.aio.insecure_channel(replica.target, options=options)
            replica.stub = recorder_pb2_grpc.RecorderStub(replica.channel)
        env = dict(self._environment)
        extra = env.pop("extra", {})
        dirty = env.pop("git_dirty", None)
        pb_env = recorder_pb2.Environment(**env)
        pb_env.extra.update(extra)
        if dirty is not None:
            pb_env.git_dirty = dirty
        self._start_request = recorder_pb2.StartSessionRequest(
            session_id=self.session_id,
            source=recorder_pb2.SOURCE_PLUGIN,
            environment=pb_env,
            started_at=self._timestamp(self._started_at),
        )

    def _timestamp(self, seconds: float):
        whole = int(seconds)
        return self._Timestamp(seconds=whole, nanos=_nanos(seconds, whole))

    def _held(self) -> int:
        return len(self._inflight) + len(self._unsent)

    def _drain(self) -> None:
        queue = self.queue
        n = len(queue)
        if not n:
            return
        popleft = queue.popleft
        seq = self._next_seq
        if self._mode == SPOOLING:
            items = []
            for _ in range(n):
                record, _size = sanitize(popleft())
                items.append((seq, record))
                seq += 1
            self._next_seq = seq
            self._spool_write(items)
            return
        append = self._unsent.append
        held = 0
        for _ in range(n):
            record, size = sanitize(popleft())
            append((seq, record, size))
            held += size
            seq += 1
        self._next_seq = seq
        self._held_bytes += held

    def _may_connect(self, closing: bool) -> bool:
        if self._grpc is None:
            return False
        if closing:
            # At the end, one more try of each address at once, not a wait for
            # servers that are gone.
            return self._connects_while_closing < len(self._replicas)
        return time.monotonic() >= self._retry_at

    async def _connect(self) -> None:
        grpc = self._grpc
        replica = self._replicas[self._current]
        if self._closing.is_set():
            self._connects_while_closing += 1
        try:
            response = await replica.stub.StartSession(
                self._start_request, timeout=RPC_TIMEOUT, metadata=self._metadata
            )
        except grpc.RpcError as error:
            self._failed("cannot reach the recorder", error)
            return
        self.listening = True
        if self._round:
            reasons = "; ".join(self._round)
            if self._session_started:
                self._warn(
                    f"{reasons}; moved to {replica.address}, resending what was not acknowledged"
                )
            else:
                self._warn(f"{reasons}; recording at {replica.address} instead")
            self._round.clear()
        self._session_started = True
        self.keep_passing_output = bool(response.keep_passing_output)
        stored = response.session.outcomes_stored
        # The server may hold outcomes whose acks were lost with the old stream.
        if self._acked < stored < self._next_seq:
            self._acked = stored
        self._stream = _Stream(self, replica.stub, self._metadata)
        self._mode = STREAMING
        self._backoff = BACKOFF_FIRST
        # Everything not acknowledged goes out again, in seq order, and
        # declares its units again.
        self._trim()
        self._declared.clear()
        if self._inflight:
            self._inflight.extend(self._unsent)
            self._unsent = self._inflight
            self._inflight = deque()

    def _failed(self, what: str, error) -> None:
        replica = self._replicas[self._current]
        name, details, nothing_listening = status(error)
        if not nothing_listening:
            self.listening = True
        elif self.listening is None:
            self.listening = False
        reason = f"{what} at {replica.address} ({name}: {_first_line(details, 120)})"
        if not replica.tls and name == "UNAVAILABLE" and "Socket closed" in details:
            # What a plaintext client sees from a TLS listener.
            reason += "; if it serves TLS, pass --mcp-tls-ca (or an https:// address)"
        if name == "UNAUTHENTICATED":
            # Reachable, but it wants a (different) token: say so, not "cannot reach".
            reason = (
                f"the recorder at {replica.address} did not accept this run's token "
                f"({name}: {_first_line(details, 120)}; set --mcp-token or PYTEST_MCP_TOKEN)"
            )
        if name == "RESOURCE_EXHAUSTED":
            # Reachable, but it cannot store (its disk is full): say that.
            reason = (
                f"the recorder at {replica.address} cannot store this run "
                f"({name}: {_first_line(details, 160)})"
            )
        if name in _PERMANENT:
            # The recorders share a database and its rules: another would say the same.
            self._give_up(reason, refused=True)
            return
        self._move_on(reason)

    def _move_on(self, reason: str) -> None:
        """After the current address failed: the next one at once, or, once every
        address failed in a row, a warning and the next round after a backoff."""
        self._problem = self._problem or reason
        self._round.append(reason)
        self._mode = CONNECTING
        count = len(self._replicas)
        self._current = (self._current + 1) % count
        if len(self._round) < count:
            self._retry_at = 0.0
            return
        reasons = "; ".join(self._round)
        self._round.clear()
        if count == 1 and self._session_started:
            self._warn(
                f"{reasons}; resending when it is back, spooling what it does not acknowledge"
            )
        elif count == 1:
            self._warn(f"{reasons}; the run goes on, results are kept and spooled if it stays away")
        elif self._session_started:
            self._warn(f"{reasons}; resending when one is back, spooling what none acknowledges")
        else:
            self._warn(f"{reasons}; the run goes on, results are kept and spooled if none answers")
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _check_stream(self) -> None:
        stream = self._stream
        if stream is None or not stream.ended:
            return
        self._stream = None
        stream.cancel()
        self._trim()
        error = stream.error
        if error is None:
            if not self._held() and self._closing.is_set():
                return
            self._failed_plain("the recorder ended the outcome stream")
            return
        if isinstance(error, self._grpc.RpcError):
            self._failed("lost the recorder", error)
        else:
            self._failed_plain(f"outcome stream failed: {_first_line(repr(error))}")

    def _failed_plain(self, what: str) -> None:
        self.listening = True  # a stream had been open
        self._move_on(f"{what} at {self._replicas[self._current].address}")

    def _trim(self) -> None:
        acked = self._acked
        inflight = self._inflight
        freed = 0
        while inflight and inflight[0][0] <= acked:
            freed += inflight.popleft()[2]
        unsent = self._unsent
        while unsent and unsent[0][0] <= acked:  # stored before a reconnect
            freed += unsent.popleft()[2]
        self._held_bytes -= freed
        declared = self._declared
        while declared and declared[0][0] <= acked:
            self._stored_units.update(declared.popleft()[1])

    def _send(self) -> None:
        unsent = self._unsent
        if not unsent or self._stream is None:
            return
        new_request = self._pb.StreamOutcomesRequest
        outcome_code = OUTCOMES
        phase_code = PHASES
        passing_text = _OPTIONAL_TEXT if self.keep_passing_output else _PASSING_TEXT
        stream = self._stream
        inflight = self._inflight
        units = self._units
        stored = self._stored_units
        while unsent:
            request = new_request(session_id=self.session_id)
            add = request.outcomes.add
            count = 0
            size = 0
            declared: set = set()
            last_seq = 0
            while unsent and count < MAX_BATCH and size < MAX_BATCH_BYTES:
                item = unsent.popleft()
                seq, r, item_size = item
                try:
                    # Only what most outcomes have goes through the constructor;
                    # fields left at their default cost nothing, and this runs
                    # once per outcome while the tests wait for the GIL.
                    o = add(
                        seq=seq,
                        nodeid=r[R.NODEID],
                        outcome=outcome_code[r[R.OUTCOME]],
                        phase=phase_code[r[R.PHASE]],
                        duration=r[R.DURATION],
                        file=r[R.FILE],
                        line=r[R.LINE] or 0,
                        attempt=r[R.ATTEMPT],
                    )
                    for name, index in passing_text if r[R.OUTCOME] == "passed" else _OPTIONAL_TEXT:
                        if r[index]:
                            setattr(o, name, r[index])
                    if r[R.MARKERS]:
                        o.markers.extend(r[R.MARKERS])
                    if r[R.WORKER]:
                        o.worker = r[R.WORKER]
                    if r[R.SUBTEST]:
                        o.subtest = r[R.SUBTEST]
                    if r[R.QUARANTINED]:
                        o.quarantined = True
                    if r[R.PROPERTIES]:
                        prop = o.user_properties.add
                        for name, value in r[R.PROPERTIES]:
                            prop(name=name, value=value)
                    started = r[R.STARTED]
                    if started:
                        whole = int(started)
                        stamp = o.started_at
                        stamp.seconds = whole
                        stamp.nanos = _nanos(started, whole)
                    deps = r[R.DEPS]
                    if deps is not None:
                        o.deps.SetInParent()  # recorded, even when empty
                        o.deps.units.extend(deps)
                        if units is not None:
                            size += self._declare(request, deps, declared, stored, units)
                except (UnicodeError, ValueError):
                    if getattr(r, "repaired", False):
                        raise  # not a problem repair() knows: _run spools everything
                    # Undecodable bytes (lone surrogates) in captured output: keep
                    # the repaired record, so a spooled copy matches what was sent.
                    del request.outcomes[count:]
                    unsent.appendleft((seq, repair(r), item_size))
                    continue
                inflight.append(item)
                count += 1
                size += item_size
                last_seq = seq
            if count:
                if declared:
                    self._declared.append((last_seq, declared))
                stream.put(request)

    @staticmethod
    def _declare(request, deps, declared: set, stored: set, units: Dict[int, tuple]) -> int:
        """Adds to the request the units of ``deps`` it does not declare yet and no
        acknowledged batch declared; returns their rough size in bytes."""
        size = 0
        add = request.units.add
        for k in deps:
            if k in stored or k in declared:
                continue
            unit = units.get(k)
            if unit is None:
                continue
            declared.add(k)
            add(key=k, code=unit[1], kind=UNIT_KINDS[unit[2]], path=unit[3], name=unit[4],
                line_start=unit[5], line_end=unit[6], checksum=unit[7])
            size += UNIT_OVERHEAD + len(unit[3]) + len(unit[4])
        return size

    def _check_memory(self) -> None:
        held = self._held()
        if held > MAX_HELD or self._held_bytes > MAX_HELD_BYTES:
            where = (
                self._replicas[self._current].address
                if self._mode == STREAMING
                else ", ".join(self.addresses)
            )
            self._give_up(
                f"{held} results not acknowledged by the recorder at {where}, "
                "more than pytest-mcp keeps in memory",
                refused=False,
            )

    def _give_up(self, reason: str, *, refused: bool) -> None:
        """Stops streaming for the rest of the run: what is held, and what comes, is spooled."""
        self._warn(f"{reason}; writing results to a spool file instead")
        self._problem = self._problem or reason
        self._refused = self._refused or refused
        self._mode = SPOOLING
        self._acked_before_spool = self._acked
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.cancel()
        self._trim()
        items = [(seq, r) for seq, r, _ in self._inflight] + [(seq, r) for seq, r, _ in self._unsent]
        self._inflight.clear()
        self._unsent.clear()
        self._held_bytes = 0
        self._spool_write(items)

    def _warn(self, text: str) -> None:
        if self.warning is None:
            self.warning = f"pytest-mcp: warning: {text}"

    def _note(self, text: str) -> None:
        self._problem = self._problem or text

    def _close_now(self) -> bool:
        if self._mode == SPOOLING:
            return True
        if self._mode == CONNECTING and not self._may_connect(True):
            return True  # the last try failed: do not wait for a server that is gone
        if self._acked >= self._next_seq - 1 and not self.queue:
            return True
        return time.monotonic() >= self._deadline

    async def _finish(self) -> None:
        stream = self._stream
        if stream is not None:
            # Half-close, and read the acks of what is still committing.
            stream.half_close()
            wait = max(0.1, min(1.0, self._deadline - time.monotonic()))
            try:
                await asyncio.wait_for(asyncio.shield(stream.reader), wait)
            except asyncio.TimeoutError:
                pass
            self._stream = None
            stream.cancel()
        self._trim()
        result = self._result
        result.outcomes = self._next_seq - 1
        acked = self._acked if self._mode != SPOOLING else self._acked_before_spool
        result.acked = min(acked, result.outcomes)
        summary = self._summary
        if summary is not None and self._session_started and not self._refused:
            await self._finish_session(summary, result)
        if self._mode == SPOOLING or self._held() or (summary is not None and not result.finished):
            self._spool_everything()
        for replica in self._replicas:
            if replica.channel is not None:
                await replica.channel.close()

    async def _finish_session(self, summary: Dict[str, Any], result: Result) -> None:
        """FinishSession at the address in use, else at the others in turn: the
        recorders share the database, and a repeated finish changes nothing."""
        request = self._pb.FinishSessionRequest(
            session_id=self.session_id,
            summary=self._pb.Summary(**summary),
            outcomes_sent=result.outcomes,
            finished_at=self._timestamp(self._finished_at),
        )
        count = len(self._replicas)
        failures = []
        for step in range(count):
            replica = self._replicas[(self._current + step) % count]
            try:
                await replica.stub.FinishSession(
                    request, timeout=RPC_TIMEOUT, metadata=self._metadata
                )
            except self._grpc.RpcError as error:
                name, details, _ = status(error)
                failures.append(f"at {replica.address} ({name}: {_first_line(details)})")
                if name in _PERMANENT:
                    break
                continue
            result.finished = True
            result.address = replica.address
            return
        self._note(f"FinishSession failed {'; '.join(failures)}")

    # ---- spool -------------------------------------------------------------

    def _keep_output(self) -> bool:
        keep = self.keep_passing_output
        return keep if keep is not None else _keep_output_from_env()

    def _start_line(self) -> Dict[str, Any]:
        return {
            "type": "start",
            "session_id": self.session_id,
            "started_at": rfc3339(self._started_at),
            "environment": self._environment,
        }

    def _spool_write(self, items: List[Tuple[int, Tuple]]) -> None:
        with self._lock:
            if self._done:
                return
            try:
                if self._spool is None:
                    self._spool = SpoolFile(
                        self._spool_dir, self.session_id, self._start_line(), self._units
                    )
                self._spool.outcomes(items, self._keep_output())
            except OSError as error:
                self._note(f"cannot write the spool file: {error}")

    def _spool_everything(self) -> None:
        """Writes what is held and queued, then the finish line, and closes the file.

        Runs once, on whichever thread gets here first.
        """
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                items: List[Tuple[int, Tuple]] = []
                acked = self._acked if self._mode != SPOOLING else 0
                for seq, r, _ in list(self._inflight) + list(self._unsent):
                    if seq > acked:
                        items.append((seq, r))
                seq = self._next_seq
                while True:  # what the sender thread never numbered
                    try:
                        record = self.queue.popleft()
                    except IndexError:
                        break
                    items.append((seq, sanitize(record)[0]))
                    seq += 1
                self._next_seq = seq
                self._result.outcomes = seq - 1
                if self._spool is None:
                    self._spool = SpoolFile(
                        self._spool_dir, self.session_id, self._start_line(), self._units
                    )
                self._spool.outcomes(items, self._keep_output())
                if self._summary is not None:
                    self._spool.finish(
                        {
                            "type": "finish",
                            "session_id": self.session_id,
                            "outcomes_sent": seq - 1,
                            "finished_at": rfc3339(self._finished_at),
                            "summary": self._summary,
                        }
                    )
                self._spool.close()
                self._result.spool_path = self._spool.path
            except Exception as error:  # OSError, or a race with a sender thread that hung
                self._note(f"cannot write the spool file: {error}")
