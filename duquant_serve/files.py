"""Writing a directory atomically, with the modes the caller's umask gives (what
`save_pretrained` does): checkpoints and model exports appear complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask_modes(root: Path) -> None:
    """The modes `save_pretrained` would give under the caller's umask (dirs 0777, files 0666,
    minus the umask): mkdtemp's 0700 and any temp file's 0600 would otherwise survive the
    rename, and a server under another uid could not read the checkpoint."""
    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for p in root.rglob("*"):
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temp directory beside `out`; when the block completes it replaces `out` (a
    previous `out` is moved aside, then deleted), when it fails it is deleted. `out` is never
    seen half written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _umask_modes(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
