"""Paths a process opens on the strength of a record, and private files.

- `inside(state_dir, path)`: a path read from a record (a run's stderr path, a stack file) is
  opened only if it resolves (symlinks followed) to a place inside the state dir; a forged record
  cannot make the CLI or a service read /etc/shadow.
- `open_regular(path)`, `open_regular_fd`: a run file is read only if it is a regular file, reached
  without following a symlink (neither the file nor its directory).
- `private_dir`, `tighten`: state files hold conversations and credentials, so they are 0600 and
  their directories 0700, created so and tightened at start when an older stack left them wider.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from wgs.common.logs import fields

log = logging.getLogger("wgs.files")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


class OutsideStateDir(ValueError):
    """A recorded path that does not lie inside the state dir."""

    def __init__(self, path: str | Path, state_dir: str | Path) -> None:
        super().__init__(f"{path} does not lie inside the state dir {state_dir}")
        self.path = str(path)
        self.state_dir = str(state_dir)


def inside(state_dir: str | Path, path: str | Path) -> Path:
    """The resolved `path`, if it lies inside `state_dir` (both resolved); else OutsideStateDir.

    A relative `path` is taken relative to the state dir. The check is on the resolved path, so
    `..` and symlinks pointing out of the state dir are refused.
    """
    root = Path(state_dir).expanduser().resolve()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise OutsideStateDir(path, root)
    return resolved


class NotARegularFile(OSError):
    """A run file that is a FIFO or a device: never read (it would block, or is not the run's)."""


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular_fd(name: str | Path, dir_fd: int | None = None) -> int:
    """A descriptor (blocking) for reading `name` (relative to `dir_fd` if given) if it is a regular
    file reached without following a symlink; else OSError (ELOOP for a link, NotARegularFile)."""
    fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(f"{name} is not a regular file")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str | Path) -> BinaryIO:
    """Open a run file for reading: a regular file, neither it nor its directory a symlink. A run
    file lives in a directory its agent can write to: an agent that replaced the file (or its chat
    directory) with a link to the stack secret or another chat's file must not have it streamed to
    a client, and a FIFO must not block the reader."""
    path = Path(path)
    parent = os.open(path.parent, DIR_FLAGS)
    try:
        fd = open_regular_fd(path.name, parent)
    finally:
        os.close(parent)
    return os.fdopen(fd, "rb")


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing; make it 0700 (tightened with a log line if wider)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    tighten(path, PRIVATE_DIR)
    return path


def tighten(path: Path, mode: int = PRIVATE_FILE) -> bool:
    """Remove permission bits beyond `mode` from an existing file or directory (not following
    symlinks); log a line when something was removed. Returns True if the mode changed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    current = stat.S_IMODE(st.st_mode)
    wanted = current & mode
    if wanted == current:
        return False
    try:
        os.chmod(path, wanted)
    except PermissionError:
        log.warning("%s is mode %o, wider than %o, and cannot be changed by this user", path, current, mode,
                    extra=fields(path=str(path)))
        return False
    log.info("tightened %s from mode %o to %o", path, current, wanted,
             extra=fields(path=str(path), old_mode=oct(current), new_mode=oct(wanted)))
    return True


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a 0600 file atomically (temp file + rename); `exclusive`: fail if `path` exists."""
    private_dir(path.parent)
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
