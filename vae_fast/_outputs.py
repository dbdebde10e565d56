"""Output directories of the command line (`--out`): checked before the long work starts, and
written so that an interrupted run never leaves a mix of two runs in them (issue 10).

`check_out_dir` only answers "can files be written there" (bench); `StagedOutputs` (train) also
stages a run's files in a temporary directory next to `--out` and moves them into place at the end.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading


def _refuse_unusable(out: str, error: type[Exception]) -> str:
    """abspath(out), or `error` when out (or the nearest existing folder above it) is not a directory."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"--out {out}: exists and is not a directory")
    above = os.path.dirname(path)
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise error(f"--out {out}: {above} is not a directory")
    return path


def _why(e: OSError) -> str:
    return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")


def check_out_dir(out: str, error: type[Exception]) -> None:
    """Raise `error` (one line naming --out) unless `out` is, or can be made, a directory this
    process can create files in: creates it (as the run would anyway) and a probe file in it."""
    path = _refuse_unusable(out, error)
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise error(f"--out {out}: cannot write there: {_why(e)}") from None


@contextlib.contextmanager
def _signals_deferred(signals=(signal.SIGINT, signal.SIGTERM)):
    """SIGINT/SIGTERM that arrive inside the block are delivered when it ends (Ctrl-C or `kill`
    cannot stop a few renames halfway). Python handlers, not a signal mask: torch's threads may
    receive a process signal too, and Python runs the handler in the main thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal works in the main thread only; nothing to defer elsewhere
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in pending:
            signal.raise_signal(s)  # now, with the original handler (KeyboardInterrupt, exit)


class StagedOutputs:
    """The files of one run, written into `path`, a fresh directory next to `out`
    (`<out>.tmp-XXXXXXXX`: the same file system, so renames are atomic), moved into place by
    commit():

    - `out` does not exist: the staging directory is renamed to `out` (one atomic rename);
    - `out` exists (a previous run; maybe other files of the user; maybe "."): each staged file
      replaces its namesake with os.replace (atomic per file) while SIGINT/SIGTERM are deferred,
      so neither stops the renames halfway; files this run does not write stay as they are. We do
      not swap whole directories: rename(2) cannot replace a non-empty directory, and moving
      `out` aside would move the user's other files with it.

    Anything that fails before commit() (an error, Ctrl-C while drawing the figures) leaves `out`
    exactly as it was; discard() removes the staging directory. Creating it is also the up-front
    check that `out` is usable. When the folder above `out` is read-only but `out` is a writable
    directory (`--out .` in a read-only parent), the staging directory is `out/.tmp-XXXXXXXX`.
    """

    def __init__(self, out: str, error: type[Exception]):
        self.out = _refuse_unusable(out, error)
        self.error = error
        parent = os.path.dirname(self.out)
        try:
            os.makedirs(parent, exist_ok=True)
            self.path = tempfile.mkdtemp(prefix=os.path.basename(self.out) + ".tmp-", dir=parent)
        except OSError as e:
            if not os.path.isdir(self.out):
                raise error(f"--out {out}: cannot create a directory there: {_why(e)}") from None
            try:
                self.path = tempfile.mkdtemp(prefix=".tmp-", dir=self.out)
            except OSError as e2:
                raise error(f"--out {out}: cannot write there: {_why(e2)}") from None
        if os.path.isdir(self.out) and not os.access(self.out, os.W_OK | os.X_OK):
            self.discard()
            raise error(f"--out {out}: cannot write there: permission denied")

    def commit(self) -> None:
        names = sorted(os.listdir(self.path))
        for name in names:  # refuse before replacing anything (a directory named like an output)
            if os.path.isdir(os.path.join(self.out, name)):
                raise self.error(f"--out {self.out}: {name} there is a directory; cannot replace it")
        with _signals_deferred():
            if not os.path.exists(self.out):
                try:
                    os.rename(self.path, self.out)
                    return
                except OSError:  # someone created `out` meanwhile: replace file by file
                    os.makedirs(self.out, exist_ok=True)
            for name in names:
                os.replace(os.path.join(self.path, name), os.path.join(self.out, name))
            os.rmdir(self.path)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
