"""Outputs written whole or not at all, and temporaries that do not outlive their process.

A temporary (the plan directory a compile builds, the video a run encodes) is created beside its target, so that
the final rename stays on one filesystem, under a unique name made with O_EXCL (mkdir for a directory) that
names its owner:

    .<target name>.arvc-<host>-<boot>-<pid>-<start>-<random><kind>

host: a hash of the hostname, machine id and pid namespace (the processes whose pids this process can see);
boot: the kernel's boot id ("x" where there is none); start: the owner's start time in clock ticks after boot
(/proc/<pid>/stat), which tells a pid from a later process that reuses it.

It is removed on any exit of its process: by the code that made it (errors, KeyboardInterrupt), at interpreter
exit, and on SIGINT, SIGTERM or SIGHUP, whose handlers remove every live temporary before the signal does what it
did before (SIGINT raises KeyboardInterrupt; SIGTERM and SIGHUP end the process, as a killed process ends).
SIGKILL or a power cut still leave one behind: the next temporary of the same kind made in that directory
removes it, when its owner is provably gone: the same host and boot, and no process with that pid and start
time; or the same host and an earlier boot. Names of another host (a shared filesystem, another container)
or of an unknown form are left alone.

Committing a file: fsync it, rename it over the target, fsync the directory, so that after a crash the target
holds the old content or the whole new one."""
from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import string
import threading
from dataclasses import dataclass
from pathlib import Path


class WriteError(OSError):
    """An output could not be written (a full disk, a file size limit, an I/O error, a read-only place); nothing
    half-written is left. The message names the output, the system's reason and the fix."""

    def __str__(self) -> str:
        return self.strerror


_FIXES = {errno.ENOSPC: "free space or choose another -o", errno.EDQUOT: "free space or choose another -o",
          errno.EFBIG: "raise the file size limit (ulimit -f) or choose another -o",
          errno.EIO: "check the disk or choose another -o", errno.EROFS: "choose a writable -o",
          errno.EACCES: "choose a writable -o", errno.EPERM: "choose a writable -o"}


_RUST_IO_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) word an OSError


def _errno_of(e: Exception) -> int | None:
    if isinstance(e, OSError):
        return e.errno
    m = _RUST_IO_ERROR.search(str(e))
    return int(m[1]) if m else None


@contextlib.contextmanager
def write_errors(target: str | os.PathLike):
    """Turns an error of the writing itself (full disk, file size limit, I/O error, no permission) into a
    WriteError naming ``target``, with the fix."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        code = _errno_of(e)
        if code not in _FIXES:
            raise
        raise WriteError(code, f"{target}: cannot write: {os.strerror(code)} (errno {code}); {_FIXES[code]}") from e


# ---- owners -------------------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """Clock ticks after boot at which ``pid`` started; None when there is no such process (or no /proc)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the command name before ")" may hold spaces


def _this_host() -> str:
    try:
        pid_space = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_space = ""
    key = "\0".join((socket.gethostname(), _read("/etc/machine-id"), pid_space))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _this_boot() -> str:
    boot = _read("/proc/sys/kernel/random/boot_id").replace("-", "")
    return boot if re.fullmatch(r"[0-9a-f]{32}", boot) else "x"


@dataclass(frozen=True)
class Owner:
    host: str
    boot: str
    pid: int
    start: int  # 0: unknown (no /proc)

    @classmethod
    def current(cls) -> "Owner":
        return cls(_this_host(), _this_boot(), os.getpid(), process_start(os.getpid()) or 0)

    def tag(self) -> str:
        return f"arvc-{self.host}-{self.boot}-{self.pid}-{self.start}"

    def provably_gone(self, here: "Owner") -> bool:
        """Whether this owner's process has ended, judged from ``here`` (the current process's owner)."""
        if self.host != here.host or (self.boot == "x") != (here.boot == "x"):
            return False  # another host's pids, or a name this host cannot judge
        if self.boot != here.boot:
            return True  # an earlier boot: all its processes ended
        if self.pid > _PID_MAX:
            return True  # no process has such a pid (and os.kill would raise OverflowError)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # someone else's process, alive
        started = process_start(self.pid)  # None where /proc hides other users' processes
        return bool(self.start) and started is not None and started != self.start  # the pid reused by a later one


_PID_MAX = 2**31 - 1  # pid_t; Linux's own limit is 2^22
_TAG = r"arvc-([0-9a-f]{12})-([0-9a-f]{32}|x)-([1-9][0-9]{0,9})-([0-9]{1,20})-[a-z0-9]{8}"
_ALPHABET = string.ascii_lowercase + string.digits


def _owner_of(name: str, kind: str) -> Owner | None:
    m = re.fullmatch(r"\..*\." + _TAG + re.escape(kind), name, re.DOTALL)
    return m and Owner(m[1], m[2], int(m[3]), int(m[4]))


def temp_name(target: Path, kind: str, owner: Owner) -> str:
    random = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f".{target.name[:100]}.{owner.tag()}-{random}{kind}"  # the target's name only informs: NAME_MAX is 255


def clean_stale(directory: Path, kind: str) -> list[Path]:
    """Removes the temporaries of ``kind`` in ``directory`` whose owner is provably gone; -> those removed."""
    removed, here = [], Owner.current()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        owner = _owner_of(name, kind)
        if owner is None or not owner.provably_gone(here):
            continue
        path = Path(directory) / name
        with contextlib.suppress(FileNotFoundError):  # another run may clean it at the same time
            _remove(path)
            removed.append(path)
    return removed


# ---- live temporaries and their removal on exit --------------------------------------------------------------

_live: dict[Path, int] = {}  # temporary -> the pid that made it (a forked child leaves its parent's alone)
_handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_previous: dict[int, object] = {}
_deferred: list[int] | None = None  # signals held back by signals_deferred


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_live() -> None:
    for path, pid in list(_live.items()):
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                _remove(path)
            _live.pop(path, None)


def _on_signal(signum, frame) -> None:
    if _deferred is not None:
        _deferred.append(signum)
        return
    _remove_live()
    previous = _previous.get(signum, signal.SIG_DFL)
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
        return
    os.kill(os.getpid(), signum)  # the default action, now restored: the process ends by this signal


def _install_handlers() -> None:
    if _previous or threading.current_thread() is not threading.main_thread():
        return  # handlers can only be set from the main thread; atexit and the callers' cleanup still hold
    for signum in _handled:
        previous = signal.getsignal(signum)
        if previous not in (signal.SIG_IGN, None):  # ignored (nohup), or set outside Python: left as it is
            _previous[signum] = previous
            signal.signal(signum, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in _previous.items():
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous)
    _previous.clear()


def _register(path: Path) -> None:
    _install_handlers()
    _live[path] = os.getpid()


def _forget(path: Path) -> None:
    _live.pop(path, None)
    if not _live:
        _restore_handlers()  # no temporary left: signals do what they did before


atexit.register(_remove_live)


@contextlib.contextmanager
def signals_deferred():
    """While a temporary is live, SIGINT, SIGTERM and SIGHUP wait until the block is done (a swap of two paths
    that must not stop halfway). The handler holds them back: masking them would not do, Python runs its handlers
    in the main thread whichever thread the signal reached."""
    global _deferred
    _deferred = []
    try:
        yield
    finally:
        pending, _deferred = _deferred, None
        if pending:
            _on_signal(pending[0], None)


# ---- making and committing ----------------------------------------------------------------------------------


def temp_dir(target: str | os.PathLike, kind: str) -> Path:
    """A new empty directory (mode 0700) beside ``target``, removed on any exit until ``discard``-ed or renamed
    and ``committed``; stale ones of the same kind there are cleaned first."""
    target = Path(target)
    clean_stale(target.parent, kind)
    owner = Owner.current()
    while True:
        path = target.parent / temp_name(target, kind, owner)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        _register(path)
        return path


def temp_file(target: str | os.PathLike, kind: str) -> tuple[int, Path]:
    """A new empty file beside ``target``, created with O_EXCL (so never through a link planted at its name) and
    the mode a plain open() gives; -> (write-only descriptor, path). Removed on any exit until ``commit_file``."""
    target = Path(target)
    clean_stale(target.parent, kind)
    owner = Owner.current()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        path = target.parent / temp_name(target, kind, owner)
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        _register(path)
        return fd, path


def discard(path: Path) -> None:
    """Removes a temporary (gone already is fine)."""
    with contextlib.suppress(FileNotFoundError):
        _remove(path)
    _forget(path)


@contextlib.contextmanager
def discarded_on_error(path: Path):
    """Removes the temporary ``path`` when the block raises (KeyboardInterrupt included)."""
    try:
        yield
    except BaseException:
        discard(path)
        raise


def committed(path: Path) -> None:
    """The temporary was renamed into place: no exit removes it now."""
    _forget(path)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Makes renames in ``directory`` durable (a filesystem that cannot fsync a directory is left as it is)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def sync_tree(directory: Path) -> None:
    """fsyncs every file under ``directory``, then the directories: its content is on disk before it is renamed."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


@contextlib.contextmanager
def writing(target: str | os.PathLike, kind: str = ".tmp"):
    """A new empty temporary file beside ``target`` for the block to write (by path); renamed over ``target``
    (fsync'd) when the block succeeds, removed when it raises. Write errors become WriteError naming target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(target, kind)
    os.close(fd)
    with discarded_on_error(tmp), write_errors(target):
        yield tmp
        commit_file(tmp, target)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """``target`` holds its old content or all of ``data``, never a part."""
    with writing(target) as tmp:
        tmp.write_bytes(data)


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swaps the entries at ``a`` and ``b`` in one step (Linux renameat2 RENAME_EXCHANGE), so that no crash
    leaves neither in place; -> False where the system or filesystem cannot (then nothing was changed)."""
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def commit_file(tmp: Path, target: str | os.PathLike) -> None:
    """fsync ``tmp``, rename it over ``target``, fsync the directory."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    committed(tmp)
    fsync_dir(Path(target).parent)
