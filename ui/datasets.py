"""Datasets given in the browser: an uploaded file or zip, or a path on the server.

A zip is unpacked (safely: no absolute paths, no ``..``, no links, bounded size) into the run's
folder, and the data inside is found the way a person would: a captions folder, or a single data
file, or ``train.*`` / ``validation.*`` (``val``, ``dev``) / ``test.*`` files.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from mmassist.core.data import CAPTION_FILES
from mmassist.core.errors import DataFormatError

DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".conll")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}
MAX_UNPACKED_BYTES = 8 * 1024**3
MAX_MEMBERS = 200_000


def prepare_dataset(upload: str | Path | None, server_path: str | None, dest: Path) -> dict[str, str]:
    """The ``data.*`` paths for a run: from an upload (copied or unpacked into ``dest``), or a path on
    the server (a file, a folder, or ``bundled:<dataset>/<file>``).

    Returns ``{}`` when neither is given (the config's own ``data.train`` is used then).
    """
    if upload:
        upload = Path(upload)
        dest.mkdir(parents=True, exist_ok=True)
        if zipfile.is_zipfile(upload):
            folder = unpack_zip(upload, dest / upload.stem)
            return find_data(folder)
        if upload.suffix.lower() not in DATA_SUFFIXES:
            raise DataFormatError(f"cannot read {upload.suffix or 'this'} files as a dataset; upload a "
                                  f"{', '.join(DATA_SUFFIXES)} file, or a .zip of a captions folder "
                                  "or of a data file with its media", path=upload.name)
        target = dest / upload.name
        shutil.copyfile(upload, target)
        return {"train": str(target)}
    if server_path and server_path.strip():
        if server_path.strip().startswith("bundled:"):  # the project's own data, built on first use
            return {"train": server_path.strip()}
        path = Path(server_path.strip()).expanduser()
        if not path.exists():
            raise DataFormatError("no such file or folder on the server", path=str(path))
        return find_data(path) if path.is_dir() else {"train": str(path.resolve())}
    return {}


def unpack_zip(archive: Path, folder: Path) -> Path:
    """Unpack ``archive`` into ``folder``, refusing unsafe or oversized archives; return the data root."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise DataFormatError(f"the zip has {len(members)} entries, more than {MAX_MEMBERS}", path=archive.name)
        if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
            raise DataFormatError(f"the zip unpacks to more than {MAX_UNPACKED_BYTES // 1024**3} GiB",
                                  path=archive.name)
        for m in members:
            name = PurePosixPath(m.filename)
            if name.is_absolute() or ".." in name.parts or ":" in m.filename:
                raise DataFormatError(f"the zip entry {m.filename!r} points outside the archive", path=archive.name)
            if stat.S_ISLNK(m.external_attr >> 16):
                raise DataFormatError(f"the zip entry {m.filename!r} is a link; zip the files themselves",
                                      path=archive.name)
        folder.mkdir(parents=True, exist_ok=True)
        zf.extractall(folder)
    root = folder
    while True:  # a zip of one folder: use that folder
        entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


def find_data(folder: Path) -> dict[str, str]:
    """The data in a folder: itself when it is a captions folder, else its data file(s) by split name."""
    if any((folder / name).is_file() for name in CAPTION_FILES):
        return {"train": str(folder.resolve())}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if len(files) == 1:
        return {"train": str(files[0].resolve())}
    found: dict[str, str] = {}
    for split, names in SPLIT_NAMES.items():
        for p in files:
            if p.stem.lower() in names:
                found[split] = str(p.resolve())
                break
    if "train" not in found:
        listed = ", ".join(p.name for p in files) or "no data files"
        raise DataFormatError(f"cannot tell which file holds the training data ({listed}); give a captions "
                              f"folder ({' or '.join(CAPTION_FILES)}), a single data file, or name it train.*",
                              path=str(folder))
    return found
