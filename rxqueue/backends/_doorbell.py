"""A cross-process doorbell on Unix datagram sockets.

Without it, a worker learns of a task pushed by another process only by
polling, and an idle poller sleeps up to its longest interval (1 s). A
:class:`SocketDoorbell` costs nothing while idle (a socket in the event loop's
selector) and a ring reaches other processes in microseconds.

**Channel.** One doorbell serves one key, a string such as a database's absolute
path plus a queue name. Its listeners live in
``<tempfile.gettempdir()>/rxqueue-<uid>/<sha1(key)[:16]>/``: the per-user
directory is mode 0700 (and refused unless this user owns it, private), the
names are short because AF_UNIX paths are limited to about 107 bytes.

**API** (the ``Doorbell`` protocol of :mod:`rxqueue.streams`, like its
in-process ``Wakeup``):

* ``notify()`` wakes this doorbell's waiters in this process at once and
  :meth:`~SocketDoorbell.ring`\\ s the other listeners.
* ``await wait(timeout) -> bool``: True if rung or notified within ``timeout``
  seconds. A ring or notify that arrives while this loop's listener exists but
  nobody waits is kept: the next ``wait`` returns True at once, so a push landing
  between a poller's empty claim and its wait is not missed (it costs at most one
  extra claim).
* ``ring()`` sends one byte to every listener of the key except this object's
  own, without blocking: a listener whose file refuses (its process died) has
  the file removed; one whose queue is full is already rung.
* ``close()`` closes this object's listeners (reader removed, file unlinked).
  After it, ``ring`` does nothing and ``wait`` hears only ``notify``.

**Lifecycle.** A listener is opened lazily by the first ``wait`` in a running
event loop, one per loop (so several loops in one process, one after another or
in threads, each have their own), named ``<pid>-<counter>.sock``. A process that
dies leaves its file behind; the next ring removes it. A forked child forgets
the listeners it inherited.

**Degrading.** If sockets fail in any way (no AF_UNIX, a directory that is not
private, a path too long, permissions), the doorbell stops using them and works
in-process only; nothing raises into a push or a poll, and the poll interval
still finds the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import socket
import stat
import tempfile
import time
import weakref
from typing import Final

# A ring reuses the last listing of the directory for CHECK_AFTER seconds without
# a syscall (a stat costs as much as a send), then while the directory's mtime is
# unchanged, and RELIST_AFTER at most: mtime can be too coarse to see two changes
# in a row. A listener that joined since is missed for that long; its own poll,
# short right after it starts, covers the gap.
CHECK_AFTER: Final = 0.05
RELIST_AFTER: Final = 0.5

_names = itertools.count(1)  # listener file names, unique within this process
_doorbells: weakref.WeakSet[SocketDoorbell] = weakref.WeakSet()


def channel_dir(key: str) -> str:
    """The directory holding the listener sockets of ``key``."""
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]
    return os.path.join(_user_dir(), digest)


def _user_dir() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"rxqueue-{uid}")


class _Listener:
    """One event loop's side of a doorbell: its event and, if sockets work, its socket."""

    __slots__ = ("event", "loop", "path", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.sock: socket.socket | None = None
        self.path: str | None = None

    def on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        # Drain everything: many rings are one wake-up, and a full queue would
        # make ringers see "already rung" for rings that came after this one.
        while True:
            try:
                sock.recv(64)
            except OSError:  # BlockingIOError once drained
                break
        self.event.set()

    def wake(self) -> None:
        """Set the event from any thread (asyncio.Event is not thread-safe)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self.event.set)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if not self.loop.is_closed():
            with contextlib.suppress(Exception):  # another thread's loop may refuse
                self.loop.remove_reader(sock.fileno())
        sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class SocketDoorbell:
    """A doorbell for one channel ``key`` that rings across processes; see the module."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.directory = channel_dir(key)
        self._usable = hasattr(socket, "AF_UNIX") and hasattr(os, "getuid")
        self._closed = False
        self._listeners: dict[asyncio.AbstractEventLoop, _Listener] = {}
        self._sender: socket.socket | None = None
        self._peers: tuple[str, ...] = ()
        self._checked_at = self._listed_at = -RELIST_AFTER
        self._listed_mtime = -1
        _doorbells.add(self)

    def __repr__(self) -> str:
        return f"SocketDoorbell({self.key!r}, listeners={len(self._listeners)})"

    # --- the Doorbell protocol ------------------------------------------------------------

    def notify(self) -> None:
        """Wake this doorbell's waiters in this process at once, and ring the others."""
        for loop, listener in list(self._listeners.items()):
            if loop.is_closed():
                self._drop(loop)
            else:
                listener.wake()
        self.ring()

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if rung or notified (also before the call,
        since the last wait in this loop)."""
        listener = self._listener(asyncio.get_running_loop())
        event = listener.event
        if not event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
        event.clear()
        return True

    # --- ringing --------------------------------------------------------------------------

    def ring(self) -> None:
        """Ring every other listener of this key; never blocks, never raises."""
        if not self._usable or self._closed:
            return
        try:
            peers = self._list_peers()
            if not peers:
                return
            sender = self._sender
            if sender is None:
                sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
        except OSError:
            self._disable()
            return
        stale = False
        for path in peers:
            try:
                sender.sendto(b"!", path)
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody is bound there: its process died without close().
                stale = True
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:
                # BlockingIOError/ENOBUFS: its queue is full, so it is already rung.
                # Anything else is that listener's trouble, not this push's.
                pass
        if stale:
            self._forget_listing()

    def _list_peers(self) -> tuple[str, ...]:
        now = time.monotonic()
        if now - self._checked_at < CHECK_AFTER:
            return self._peers
        self._checked_at = now
        try:
            mtime = os.stat(self.directory).st_mtime_ns
            if mtime == self._listed_mtime and now - self._listed_at <= RELIST_AFTER:
                return self._peers
            names = os.listdir(self.directory)
        except FileNotFoundError:
            self._peers = ()  # no listener is bound, or the last one just left
            return ()
        own = {listener.path for listener in self._listeners.values()}
        self._peers = tuple(
            path
            for name in names
            if name.endswith(".sock") and (path := os.path.join(self.directory, name)) not in own
        )
        self._listed_mtime = mtime
        self._listed_at = now
        return self._peers

    def _forget_listing(self) -> None:
        self._checked_at = self._listed_at = -RELIST_AFTER
        self._listed_mtime = -1

    # --- listening ------------------------------------------------------------------------

    def _listener(self, loop: asyncio.AbstractEventLoop) -> _Listener:
        listener = self._listeners.get(loop)
        if listener is not None:
            return listener
        for old in [old for old in self._listeners if old.is_closed()]:
            self._drop(old)
        listener = self._listeners[loop] = _Listener(loop)
        if self._usable and not self._closed:
            try:
                self._bind(listener)
            except (OSError, ValueError, RuntimeError):
                listener.close()
                self._disable()
        return listener

    def _bind(self, listener: _Listener) -> None:
        _make_private_dir(_user_dir())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.sock = sock
        sock.setblocking(False)
        for _ in range(5):
            path = os.path.join(self.directory, f"{os.getpid()}-{next(_names)}.sock")
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.directory, 0o700)
                sock.bind(path)
            except FileNotFoundError:
                continue  # another process's close() removed the empty directory
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                _unlink_if_dead(path)  # a dead process with this pid left it
                continue
            listener.path = path
            self._forget_listing()  # the next ring must skip this new own file
            break
        else:
            raise OSError(f"could not bind a doorbell socket in {self.directory}")
        listener.loop.add_reader(sock.fileno(), listener.on_readable)

    # --- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Close this object's listeners and stop ringing; waits still hear ``notify``."""
        self._closed = True
        for loop in list(self._listeners):
            listener = self._listeners[loop]
            listener.close()
            if loop.is_closed():
                del self._listeners[loop]
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)  # only if no other listener is left in it

    def _drop(self, loop: asyncio.AbstractEventLoop) -> None:
        listener = self._listeners.pop(loop, None)
        if listener is not None:
            listener.close()

    def _disable(self) -> None:
        """Sockets failed: in-process notify only from now on; polling covers the rest."""
        self._usable = False
        for listener in self._listeners.values():
            listener.close()
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    def _after_fork(self) -> None:
        # The inherited sockets and files are the parent's: close only our copies.
        for listener in self._listeners.values():
            if listener.sock is not None:
                listener.sock.close()
                listener.sock = None
        self._listeners.clear()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self._forget_listing()


def _make_private_dir(path: str) -> None:
    """Create ``path`` mode 0700, or refuse one that another user could write in."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    ):
        raise PermissionError(f"{path} is not a private directory of this user")


def _unlink_if_dead(path: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.setblocking(False)
        probe.sendto(b"!", path)
    except ConnectionRefusedError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


def _forget_in_child() -> None:
    for doorbell in list(_doorbells):
        doorbell._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
