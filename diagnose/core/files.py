"""Atomic file writes that follow the umask: results, reports and cached weights.

A write goes to a temporary file in the same folder, is fsynced, then replaces
the target with ``os.replace``, so a reader (or a crash) never sees half a file;
the final mode is what ``open`` would give under the process's umask. A full
disk or a denied folder is one ``OSError`` line naming the path and the reason.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_text",
    "current_umask",
]

_WRITE_REASONS = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied (the folder is not writable)",
    errno.EPERM: "permission denied (the folder is not writable)",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "the folder does not exist",
}


def _write_error(path: Path, exc: OSError) -> OSError:
    """A one-line error of the same OSError subclass naming ``path`` and why it failed.

    ``errno`` is kept so callers can still branch on it; ``filename`` is not set
    because it would change ``str()`` back to the terse ``[Errno N] ...`` form.
    """
    reason = _WRITE_REASONS.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    hint = "free some space or " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    err = type(exc)(
        f"cannot write {path}: {reason}; the previous file, if any, is unchanged "
        f"({hint}choose another output folder)."
    )
    err.errno = exc.errno
    return err


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting
    and restoring it under a lock (the umask is process-wide, so only threads
    that create files outside this function could ever see the brief change).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; the parent folder must exist.

    The bytes go to a temporary file in the same folder, which then replaces
    ``path`` in one step, so a crash or a full disk never leaves a truncated
    file: the previous ``path`` (if any) stays as it was and the temporary file
    is removed. The file gets the permissions any tool's output gets,
    ``0o666 & ~umask`` (e.g. ``-rw-r--r--`` under umask 022), not the private
    ``0o600`` of a temporary file.

    Raises:
        OSError: (the same subclass as the underlying error, ``errno`` kept) with a
            one-line message naming ``path`` and the reason, e.g.
            ``cannot write out/results.json: no space left on device (the disk is full); ...``.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # POSIX; Windows has no such mode bits to set
                os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then :func:`diagnose.core.schema.atomic_write_bytes`.

    A reader never sees a half-written file, and two processes writing the
    same path at once each leave a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_dir(write: Callable[[Path], None], path: str | os.PathLike) -> Path:
    """Fill a fresh directory with ``write(tmp)`` beside ``path``, then swap it in.

    The directory counterpart of :func:`atomic_write_bytes` (a peft adapter is a folder):
    a crash or an error leaves the previous directory (or none) in place, never half of a
    new one; the previous one is removed only once the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        write(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists() and not path.exists():
                os.replace(old, path)  # put the previous directory back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return path
