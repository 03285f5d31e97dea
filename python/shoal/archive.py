"""Packing a function directory into the tar archive ``POST /v1/functions`` takes."""

from __future__ import annotations

import io
import os
import tarfile
from typing import List, Union

PathLike = Union[str, "os.PathLike[str]"]

_SKIPPED = ("__pycache__", "venv")


def _collect(root: str, rel: str, out: List[str]) -> None:
    with os.scandir(os.path.join(root, rel) if rel else root) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name in _SKIPPED:
                continue
            path = f"{rel}/{name}" if rel else name
            if entry.is_dir(follow_symlinks=False):
                _collect(root, path, out)
            elif entry.is_file(follow_symlinks=True):
                # Regular files, and links to files (the archive holds their content).
                out.append(path)


def pack_dir(directory: PathLike) -> bytes:
    """Returns a deterministic tar archive of a function directory.

    The same files give the same bytes: entries sorted by path, mode 0644,
    mtime 0, no owner. Hidden files and directories, ``__pycache__`` and
    ``venv`` are left out; links to files are followed, links to directories
    are not. Raises ``FileNotFoundError`` when the directory has no
    ``shoal.toml``.
    """
    root = os.fspath(directory)
    if not os.path.isfile(os.path.join(root, "shoal.toml")):
        raise FileNotFoundError(f"{root} has no shoal.toml; a function directory needs one")
    files: List[str] = []
    _collect(root, "", files)
    files.sort(key=lambda p: p.split("/"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in files:
            with open(os.path.join(root, *rel.split("/")), "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
