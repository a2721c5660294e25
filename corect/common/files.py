"""Safe file writes and reads.

Writes are atomic: a result file is either the old one or the complete new one, and a
replaced directory stays recoverable after a kill at any moment. Temporary entries are
siblings named ``.<name>.tmp-<host>-<pid>-<random>`` (and ``.<name>.old-<host>-<pid>-x``
for a directory being replaced), so the next writer or reader of the same path can tell
which ones a dead process of this machine left and finish its work (:func:`recover`).
Reads of JSON go through :func:`read_json`, whose errors name the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from corect.common.errors import InputError

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (setting and
    restoring it would briefly affect files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_permissions(path: str | Path) -> None:
    """Give a file or directory made by :mod:`tempfile` (private, 0600/0700) the mode
    that a plain ``open``/``mkdir`` would have given it, so results can be shared."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-{HOST}-{os.getpid()}-"


def _leftovers(path: Path) -> list[tuple[Path, str]]:
    """(entry, 'tmp' or 'old') beside `path` that a dead writer of this machine left."""
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(tmp|old)-(.+)-(\d+)-[A-Za-z0-9_]+$", re.ASCII
    )
    found = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and match[2] == HOST and not process_alive(int(match[3])):
            found.append((entry, match[1]))
    return sorted(found, key=lambda item: item[1] != "old")  # 'old' first


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | Path) -> None:
    """Finish what a killed writer of `path` left: when `path` is missing and the writer
    had moved the previous version aside, put it back; remove its temporary entries.
    Only entries named by our writers, of processes of this machine that no longer run,
    are touched."""
    path = Path(path)
    for entry, kind in _leftovers(path):
        try:
            if kind == "old" and not os.path.lexists(path):
                entry.rename(path)
            else:
                _remove(entry)
        except OSError:  # another process recovered it first
            pass


class WriteError(InputError):
    """An output cannot be written (a full disk, a read-only folder, no permission)."""


_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (is the folder read-only?)",
    errno.EPERM: "operation not permitted (is the folder read-only?)",
}


def write_error(path: Path, err: OSError) -> WriteError:
    """The :class:`WriteError` of a failed write of `path`, saying what is left there."""
    why = _WRITE_FAILURES.get(err.errno or 0, err.strerror or str(err))
    left = "its previous version is kept" if path.exists() else "nothing was written"
    return WriteError(f"{path}: cannot be written: {why}; {left}")


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:  # a read-only folder: it can be neither made nor left behind
        pass


def _check_parent(path: Path) -> None:
    if not path.name or path.name in (".", ".."):
        raise InputError(f"{path}: give a file or folder name, not {str(path)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{path}: cannot create its folder {path.parent}: {err}") from None


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it gets the usual
    file mode and is renamed over `path`, on failure it is removed. So `path` is always
    either the old file or the complete new one. A folder at `path` is refused; a write
    that fails (a full disk, a read-only folder) raises :class:`WriteError` naming `path`."""
    path = Path(path)
    _check_parent(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    recover(path)
    try:
        fd, name = tempfile.mkstemp(prefix=_prefix(path, "tmp"), dir=path.parent)
    except OSError as err:
        raise write_error(path, err) from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        set_default_permissions(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise write_error(path, err) from err
    except BaseException:
        _discard(tmp)
        raise


def _rename_new(tmp: Path, path: Path, keep_existing: bool) -> None:
    """Move the finished `tmp` to the name `path`, unless another process has taken it (a
    directory rename never replaces a non-empty folder or a file): then keep theirs and drop
    `tmp` when `keep_existing`, else raise :class:`InputError`."""
    try:
        tmp.rename(path)
    except OSError as err:
        if not os.path.lexists(path):
            raise
        if not keep_existing:  # the caller's cleanup removes `tmp`
            raise InputError(
                f"{path}: another process wrote it while this one was writing ({err.strerror}); "
                "it was kept and this result dropped. Give each run its own output name"
            ) from None
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_directory(
    path: str | Path, refuse: Callable[[Path], str | None], *, keep_existing: bool = False
) -> Iterator[Path]:
    """Yield a temporary directory beside `path` to fill; on success it (and what it
    holds) gets the usual modes and replaces `path`, on failure it is removed.

    An existing `path` is replaced only when ``refuse(path)`` returns None (it returns
    why the folder is not one we may replace: :class:`InputError`, before anything is
    written). A kill at any moment leaves `path` either the old directory, the new one, or
    missing with the old one beside it, which :func:`recover` (run by the next writer and
    by readers) puts back.

    ``keep_existing`` is for caches that concurrent processes fill with the same content
    (trials of a sweep generating the same synthetic set): a `path` that exists when ours
    is complete (another process finished first) is kept, untouched under its readers,
    and ours is dropped (only an empty folder there is replaced)."""
    path = Path(path)
    _check_parent(path)
    recover(path)
    if os.path.lexists(path) and not keep_existing:
        reason = refuse(path) if path.is_dir() and not path.is_symlink() else "not a folder"
        if reason:
            raise InputError(
                f"{path} exists and {reason}; nothing was written or removed. Choose a new "
                "name, or move it away yourself"
            )
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path, "tmp"), dir=path.parent))
    try:
        yield tmp
        for item in (tmp, *tmp.rglob("*")):
            set_default_permissions(item)
        if os.path.lexists(path) and not keep_existing:
            old = path.with_name(f"{_prefix(path, 'old')}x")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_new(tmp, path, keep_existing)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (see :func:`atomic_target`)."""
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """:func:`write_atomic` of `data` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def read_text(path: str | Path, error: type[InputError] = InputError, hint: str = "") -> str:
    """The UTF-8 text of a file; a missing, unreadable or binary file raises `error`
    naming it (`hint` is appended to the binary-file message)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: not found") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (not UTF-8){hint}") from None
    except OSError as err:
        raise error(f"{path}: cannot be read: {err.strerror or err}") from None


def read_json(path: str | Path, error: type[InputError] = InputError) -> Any:
    """The JSON value of a file; a missing, unreadable or invalid file raises `error`
    naming it."""
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err}); is the file truncated?") from None


def read_yaml(path: str | Path, error: type[InputError] = InputError, hint: str = "") -> Any:
    """The YAML value of a file (None when empty); a missing, unreadable, binary or
    invalid file raises `error` naming it."""
    text = read_text(path, error, hint)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err


def check_output(output: str | Path | None, *inputs: str | Path) -> None:
    """Refuse an output file that is a folder or one of the command's inputs."""
    if output is None:
        return
    if Path(output).is_dir():
        raise InputError(f"{output}: is a folder; give a file name for the output")
    for given in inputs:
        if Path(given).exists() and Path(output).resolve() == Path(given).resolve():
            raise InputError(f"{output}: is also the input; give another output file")


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies inside it (symbolic links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def output_directory(parent: str | Path, name: str) -> Path:
    """Create and return a new folder ``parent/name``; where that exists already,
    ``parent/name-1``, ``parent/name-2``, ...: a second output never lands in a first."""
    parent, k = Path(parent), 1
    path = parent / name
    while path.exists():
        path, k = parent / f"{name}-{k}", k + 1
    path.mkdir(parents=True)
    return path
