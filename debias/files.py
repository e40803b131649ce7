"""Files written all at once, read back strictly, and one writer per destination.

Every output lands whole: a file is written to a temp file beside it and renamed into place; a
set of files (an audit, a report) is written into a temp folder beside its destination and
swapped in with one atomic rename. A kill at any instant leaves the previous file or set or the
new one, never a mix, and the temps a killed process leaves are removed by the next writer.
JSON is strict (no NaN); CSV cells and headers that a spreadsheet would run as formulas are
quoted. A destination has one writer at a time: :func:`lock` takes an advisory lock that the
kernel drops when its holder dies, so a crash never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pandas as pd

from debias import errors


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

# Cells starting with these are formulas to a spreadsheet; prefixing a quote makes them text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ---------------------------------------------------------------------------------------------
# Temps: named after their destination and their writer's pid, so the next writer can tell a
# dead writer's leftovers from a live one's work in progress.


def _temp_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(path: str | os.PathLike[str]) -> None:
    """Remove the temps that writers of ``path`` left when they were killed."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for leftover in path.parent.glob(f".{path.name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fh)`` into a temp file beside it, then rename it into place."""
    path = Path(path)
    if path.is_dir():
        raise errors.DataError(errors.OUT_IS_DIR.format(path=path))
    remove_stale_temps(path)
    tmp = _temp_name(path, "tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name_the_file(exc, path)
        raise


def _name_the_file(exc: BaseException, path: Path) -> None:
    """Give an OSError raised while writing ``path`` its file name, for the one-line message."""
    if isinstance(exc, OSError) and not exc.filename:
        exc.filename = str(path)


def _strict(obj: Any) -> Any:
    """``obj`` as plain JSON values: strict JSON has no NaN, numpy and torch values unwrapped.

    Non-finite floats become None; numpy and torch scalars and arrays their Python values;
    anything else unknown (paths, ...) its text.
    """
    if isinstance(obj, dict):
        return {
            k if isinstance(k, str | int | float | bool) else str(k): _strict(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if isinstance(obj, float):  # numpy's float64 too
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if callable(getattr(obj, "tolist", None)):  # numpy and torch scalars and arrays
        return _strict(obj.tolist())
    return str(obj)


def json_text(obj: Any) -> str:
    """Strict JSON text: NaN and infinities become null, anything else unknown a string."""
    return json.dumps(_strict(obj), indent=2, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write strict JSON atomically."""
    atomic_write(path, lambda fh: fh.write(json_text(obj).encode()))


def damaged(path: object, problem: str, fix: str) -> errors.RunError:
    """Return the error for a file debias wrote that cannot be read back as it was written."""
    return errors.RunError(errors.DAMAGED_FILE.format(path=path, problem=problem, fix=fix))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")


def read_json(path: str | os.PathLike[str], fix: str, *, kind: type = dict) -> Any:
    """Parse a JSON file the tool wrote, strictly; raise RunError naming the file otherwise.

    Parameters
    ----------
    path : path-like
        The file.
    fix : str
        What the user can do when it is damaged (the end of the one-line message).
    kind : type
        The type the top-level value must have.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise damaged(path, f"not valid JSON ({reason})", fix) from None
    if not isinstance(value, kind):
        raise damaged(path, f"holds a {type(value).__name__}, not a {kind.__name__}", fix)
    return value


def read_csv(
    path: str | os.PathLike[str], fix: str, columns: set[str], **options: Any
) -> pd.DataFrame:
    """Parse a CSV the tool wrote and check it has ``columns``; raise RunError naming it otherwise.

    ``options`` go to :func:`pandas.read_csv`; ``fix`` ends the one-line message.
    """
    try:
        frame = pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        problem = f"not a readable CSV ({str(exc).splitlines()[0][:100]})"
        raise damaged(path, problem, fix) from None
    missing = columns - set(frame.columns)
    if missing:
        raise damaged(path, f"lacks the column(s) {', '.join(sorted(missing))}", fix)
    return frame


def _neutralize(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> str:
    """Write a CSV atomically; text cells and headers a spreadsheet would run are quoted.

    Returns the SHA-256 of the file written, so a file written beside it can vouch for it.
    """
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(_neutralize)
    safe.columns = [_neutralize(str(c)) for c in safe.columns]
    data = safe.to_csv(index=False).encode()
    atomic_write(path, lambda fh: fh.write(data))
    return hashlib.sha256(data).hexdigest()


def sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write one strict JSON object per line, atomically."""
    text = "".join(json.dumps(_strict(r), allow_nan=False) + "\n" for r in records)
    atomic_write(path, lambda fh: fh.write(text.encode()))


# ---------------------------------------------------------------------------------------------
# Sets of files: staged in a folder beside the destination, swapped in with one rename.

_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def staged_folder(
    dest: str | os.PathLike[str], marker: str, what: str, overwrite: bool = True
) -> Iterator[Path]:
    """Yield an empty temp folder; when the block ends without error it becomes ``dest``.

    The previous ``dest`` (if any) is replaced in one atomic swap, so readers and a kill at any
    instant see the whole old set or the whole new one. On error the temp folder is removed and
    ``dest`` is untouched.

    Parameters
    ----------
    dest : path-like
        The folder the set lands in.
    marker : str
        A file every such set holds: a non-empty ``dest`` without it holds someone else's files,
        which are never replaced.
    what : str
        What the set is, for the message (e.g. "a debias audit").
    overwrite : bool
        Whether an existing set of the same kind may be replaced.
    """
    dest = Path(dest)
    _recover(dest)  # first: the set a kill left aside is a dead writer's temp, and kept
    remove_stale_temps(dest)
    check_destination(dest, marker, what, overwrite)
    staging = _temp_name(dest, "new")
    staging.mkdir(parents=True)
    try:
        yield staging
        for written in staging.rglob("*"):
            if written.is_file():
                with open(written, "rb") as fh:
                    os.fsync(fh.fileno())
        if not dest.exists():
            os.rename(staging, dest)
        elif _exchange(staging, dest):
            shutil.rmtree(staging)  # it holds the previous set now
        else:  # two renames; _recover puts the old set back if a kill falls between them
            old = _temp_name(dest, "old")
            os.rename(dest, old)
            os.rename(staging, dest)
            shutil.rmtree(old)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _name_the_file(exc, dest)
        raise


@contextlib.contextmanager
def output_set(
    dest: str | os.PathLike[str], marker: str, what: str, overwrite: bool = True
) -> Iterator[Path]:
    """Write a set of files as one: one writer at a time, landing whole; yield the folder to fill.

    Combines :func:`lock` and :func:`staged_folder`.
    """
    dest = Path(dest)
    with lock(dest.parent / f".{dest.name}.lock", dest):
        with staged_folder(dest, marker, what, overwrite) as staging:
            yield staging


def check_destination(
    dest: str | os.PathLike[str], marker: str, what: str, overwrite: bool = False
) -> None:
    """Raise RunError unless a set can land at ``dest``: call it before the work, not after.

    ``dest`` may be missing, an empty folder, or (with ``overwrite``) a set of the same kind:
    one holding ``marker``. A file, a folder of other files, or an existing set without
    ``overwrite`` is refused with one line.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise errors.RunError(errors.OUT_IS_FILE.format(path=dest))
    if dest.is_dir() and any(dest.iterdir()):
        if not (dest / marker).is_file():
            raise errors.RunError(errors.OUT_FOREIGN.format(path=dest, what=what, marker=marker))
        if not overwrite:
            raise errors.RunError(errors.OUT_EXISTS.format(path=dest, what=what))


def _recover(dest: Path) -> None:
    """Put back a previous set that a kill between two renames left aside."""
    if dest.exists():
        return
    for old in sorted(dest.parent.glob(f".{dest.name}.old-*")):
        os.rename(old, dest)
        return


# ---------------------------------------------------------------------------------------------
# One writer at a time


@contextlib.contextmanager
def lock(lock_path: str | os.PathLike[str], what: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block; raise RunError if another has it.

    The lock is ``flock``: the kernel releases it when the holder exits, however it exits. The
    file records the holder's pid for the message a second writer gets, and is removed on
    release (re-checked after locking, so a file removed under a waiting writer is not trusted).
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            _name_the_file(exc, lock_path.parent)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise errors.RunError(errors.LOCKED.format(path=what, holder=holder)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed between our open and our lock: take the new one
    try:
        try:  # who holds it, for a second writer's message; a full disk only loses the name
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv[:3])})".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds a lock, as its holder wrote it into the lock file."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def check_unlocked(lock_path: str | os.PathLike[str], what: str | os.PathLike[str]) -> None:
    """Raise RunError if a writer holds ``lock_path`` now (readers wait for a finished set)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise errors.RunError(errors.BEING_WRITTEN.format(path=what, holder=_holder(fd))) from None
    finally:
        os.close(fd)
