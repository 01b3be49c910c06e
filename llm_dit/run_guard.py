"""Ending a run cleanly: stop signals, and ranks whose peer died.

`StopSignals`: the first SIGTERM or SIGINT asks the run to stop after the batch in
flight (the writer writes it, merges the table and raises `RunStopped`); a second
SIGINT interrupts at once, as Ctrl-C normally does.

`PeerWatchdog`: with several ranks, a rank that dies leaves the others waiting in
a collective (NCCL's default timeout is 30 minutes, and a subprocess-launched
rank is never told). Each rank touches a heartbeat file in the run folder from a
thread; a rank whose peer's heartbeat stops for `timeout_s` prints one line and
exits, and the run can be resumed. Files (not the process group's store) because
the store lives in rank 0, which is one of the processes that may die.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: try again (resume)


class RunStopped(SystemExit):
    """Raised after the batch in flight was written, when a stop signal arrived."""


class StopSignals:
    """SIGTERM / SIGINT handlers that request a stop at the next batch boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread
        for number in self.SIGNALS:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = name
        print(f"\n{name} received: finishing the batch in flight, then stopping (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.received or "SIGTERM"))


class PeerWatchdog:
    """Heartbeat files + a thread that ends this process when a peer rank stops beating."""

    def __init__(self, folder: Path, rank: int, world_size: int, timeout_s: float, message: str) -> None:
        if timeout_s <= 0:
            raise ValueError(f"peer timeout must be > 0 seconds, got {timeout_s}")
        self.folder = Path(folder) / ".ranks"
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.message = message
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0

    def _path(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.alive"

    def beat(self, text: str | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._beats += 1
        path = self._path(self.rank)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(text or f"{socket.gethostname()} {os.getpid()} {self._beats}")
        os.replace(temporary, path)

    def start(self) -> None:
        """Call on every rank once this run owns the folder (rank 0 holds its lock)."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="llm-dit-peer-watchdog", daemon=True)
        self._thread.start()

    def stop(self, clean: bool = True) -> None:
        """Stop beating. `clean`: this rank ended normally, so peers must not take its silence
        for death; after a failure the file is left as it is, so peers notice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if clean:
            try:
                self.beat("done")
            except OSError:
                pass

    def _read(self, peer: int) -> str | None:
        try:
            return self._path(peer).read_text()
        except OSError:
            return None

    def _run(self) -> None:
        interval = min(1.0, self.timeout_s / 5)
        peers = [peer for peer in range(self.world_size) if peer != self.rank]
        # A file left by an earlier run says nothing: a peer counts as alive once its file changes.
        initial = {peer: self._read(peer) for peer in peers}
        alive: set[int] = set()
        last_change = {peer: (initial[peer], time.monotonic()) for peer in peers}
        while not self._stop.wait(interval):
            try:
                self.beat()
            except OSError:
                pass
            now = time.monotonic()
            for peer in peers:
                content = self._read(peer)
                if content != initial[peer]:
                    alive.add(peer)
                if peer in alive and content == "done":
                    continue
                if peer in alive and content is not None and _process_gone(content):
                    self._peer_lost(peer, None)
                if content != last_change[peer][0]:
                    last_change[peer] = (content, now)
                elif now - last_change[peer][1] > self.timeout_s:
                    self._peer_lost(peer, now - last_change[peer][1])

    def _peer_lost(self, peer: int, silent_s: float | None) -> None:
        why = "its process ended" if silent_s is None else f"no heartbeat for {silent_s:.0f} s"
        peer_lost(f"rank {peer} stopped ({why}); rank {self.rank} stops too.", self.message)


def peer_lost(what: str, hint: str) -> None:
    """One line, then leave at once: this rank's collectives can only hang or fail now."""
    print(f"error: {what} {hint}", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)


def _process_gone(content: str) -> bool:
    """A peer on this host whose process has exited (or is a zombie awaiting its parent)."""
    parts = content.split()
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        state = Path(f"/proc/{parts[1]}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return Path("/proc/self").exists() and not Path(f"/proc/{parts[1]}").exists()
    return state in ("Z", "X")


#: Messages of a collective whose peer died (gloo raises a plain RuntimeError).
PEER_FAILURE_MARKERS = ("closed by peer", "reset by peer", "remote worker", "Broken pipe", "Connection refused")


def is_peer_failure(error: BaseException) -> bool:
    distributed_error = getattr(__import__("torch").distributed, "DistError", ())
    text = str(error)
    return isinstance(error, distributed_error) or any(marker in text for marker in PEER_FAILURE_MARKERS)
