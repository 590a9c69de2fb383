"""Files written whole or not at all: atomic writes (a temporary file renamed over the path),
output paths checked before any work, file-system errors as one line naming the path, and the
fault-injection hook the kill tests use."""
import contextlib
import errno
import os
import signal
import tempfile
import time

from ops.errors import UserError

TMP_PREFIX = '.tmp_'
# errors of the file system rather than of the program: reported as one line naming the path
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                  errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EFBIG)
# what torch.save's zip writer raises when the file under it stopped growing mid-write (a full
# disk, a file-size limit) and the error of the write itself was lost
TORCH_WRITER_FAILURES = ('inline_container', 'unexpected pos')
# fault injection for tests/test_fault_injection.py and tools/fault_injection.py:
# MASNET_FAULT=<file name>:<n>:<point>:<signal> sends SIGKILL/SIGINT to this process during its
# n-th atomic write of a file of that name, at point 'open' (nothing written yet) or 'written'
# (data written, before the rename); MASNET_WRITE_DELAY=<seconds> sleeps at 'written'
FAULT_ENV, DELAY_ENV = 'MASNET_FAULT', 'MASNET_WRITE_DELAY'
_write_counts = {}


class FileWriteError(UserError, OSError):
    """A file that cannot be written (disk full, no permission, ...); the message names it."""


def prepare_output(path, flag):
    """Check, before any work, that the output file `path` of `flag` can be written: its missing
    folders are created (as atomic_write does); a folder that cannot be created or written, or a
    `path` that is a folder, is a FileWriteError naming the flag."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise FileWriteError(exc.errno, f"{flag} '{path}': cannot create its folder: "
                                        f"{exc.strerror}") from None
    if os.path.isdir(path):
        raise FileWriteError(errno.EISDIR, f"{flag} '{path}' is a folder, not a file")
    if not os.access(folder, os.W_OK):
        raise FileWriteError(errno.EACCES, f"{flag} '{path}': its folder is not writable")


def _chain(exc):
    """`exc` and the errors it was raised from (or during), newest first."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def storage_error(exc, path):
    """The FileWriteError for `exc` if it (or an error it was raised from) is a file-system
    error such as ENOSPC or EFBIG (a file-size limit), or torch.save's writer failing mid-file,
    else None."""
    for seen in _chain(exc):
        if isinstance(seen, FileWriteError):
            return seen
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            where = seen.filename or path
            limit = ' (the file-size limit of this process: ulimit -f)' \
                if seen.errno == errno.EFBIG else ''
            return FileWriteError(seen.errno, f"cannot write '{where}': {seen.strerror}{limit}")
    for seen in _chain(exc):
        if isinstance(seen, RuntimeError) and any(s in str(seen) for s in TORCH_WRITER_FAILURES):
            return FileWriteError(errno.EIO, f"cannot write '{path}': the file stopped growing "
                                             f"mid-write (a full disk or a file-size limit?)")
    return None


def _fault_point(path, point):
    """The test hook of atomic_write (see FAULT_ENV); a no-op unless the variables are set."""
    name = os.path.basename(path)
    if point == 'written' and os.environ.get(DELAY_ENV):
        time.sleep(float(os.environ[DELAY_ENV]))
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, nth, where, sig = spec.split(':')
    if target != name or where != point:
        return
    _write_counts[name] = _write_counts.get(name, 0) + 1
    if _write_counts[name] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL if sig == 'kill' else signal.SIGINT)
        time.sleep(5)  # the signal arrives while the writer is inside the window


def file_mode():
    """0666 less the process umask: the permissions open() gives new files (0644 usually)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale_temp_files(folder):
    """Delete the temporary files of atomic writes a killed process left in `folder`;
    returns their names. Call it only while no other process writes there (run-folder lock)."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(n for n in os.listdir(folder) if n.startswith(TMP_PREFIX))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` for writers that open files themselves (OpenCV's
    VideoWriter): it keeps `path`'s extension, and replaces `path` only when the block ends
    without an error; otherwise it is removed and `path` keeps its old content. A full disk or
    a permission error raises FileWriteError naming the path."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path),
                                        dir=folder)
        os.close(fd)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        error = storage_error(exc, path) if isinstance(exc, OSError) else None
        if error is not None and error is not exc:
            raise error from None
        raise


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a file that replaces `path` only once fully written and flushed to disk.

    The data goes to a temporary file (``.tmp_*``) in the same folder, renamed over `path` in
    one `os.replace`; on any error (or Ctrl-C) the temporary file is removed and `path` keeps
    its old content. The file gets the permissions of a plain open() (umask respected).
    A full disk or a permission error raises FileWriteError naming the path.
    mode: 'wb' or 'w' (text).
    """
    folder = os.path.dirname(os.path.abspath(path))
    _fault_point(path, 'open')
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path),
                                        dir=folder)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            _fault_point(path, 'written')
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        if isinstance(exc.__context__, KeyboardInterrupt):
            # Ctrl-C inside the writer, whose clean-up then failed (torch.save does): report
            # the interrupt, not the clean-up error
            raise KeyboardInterrupt from exc
        if not isinstance(exc, KeyboardInterrupt):
            error = storage_error(exc, path)
            if error is not None and error is not exc:
                raise error from None
        raise
