"""Small helpers shared by every stage: atomic writes, CSV reading, the one sha256 of files, `diff_keys`."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_of_file(*paths, chunk_size=1 << 20):
    """Hex sha256 of a file's bytes, or over several files' bytes one after the other (identical files share it).

    Args:
        *paths: str or `pathlib.Path`. The file(s), read in binary chunks.
        chunk_size: int. Bytes read at a time. Defaults to `1 << 20` (1 MiB).

    Returns:
        str. 64 lowercase hex digits.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda handle=handle: handle.read(chunk_size), b""):
                digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path):
    """`sha256_of_file(path)`, or `None` if the file does not exist (a fingerprint entry for an optional input).

    Args:
        path: str or `pathlib.Path`.
    """
    return sha256_of_file(path) if Path(path).is_file() else None


def diff_keys(recorded, current, ignore=()):
    """`key: old -> new` for every key whose value differs between two flat dicts (sorted; `ignore` left out).

    The one way every stale-run, stale-cache and stale-prediction message says what changed.

    Args:
        recorded: dict. What was recorded.
        current: dict. What it would be now.
        ignore: iterable of str. Keys not compared. Defaults to `()`.

    Returns:
        list of str.
    """
    keys = sorted((set(recorded) | set(current)) - set(ignore))
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys if recorded.get(k) != current.get(k)]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    An interrupted job therefore never leaves a half-written output behind, and
    an earlier complete output survives until the new one is complete. The
    parent directory is created if needed; the temporary file gets the mode an
    ordinary new file would get under the process umask (not `mkstemp`'s 0600).

    Args:
        path: str or `pathlib.Path`. The final output path.

    Yields:
        str. A temporary file path in the same directory. Write to it inside the
        `with` block; it is renamed over `path` (`os.replace`, atomic on POSIX)
        when the block exits normally and deleted when it raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs should look like any other file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text):
    """Write a text file atomically (temp file + rename).

    Args:
        path: str or `pathlib.Path`. Output file; parent directories are created.
        text: str. Content, written as UTF-8 with newlines kept as given.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def write_csv_atomic(path, rows, fieldnames):
    """Write dict rows as CSV atomically, columns in `fieldnames` order.

    Args:
        path: str or `pathlib.Path`. Output CSV file; parent directories are created.
        rows: iterable of dict. One dict per row; keys missing from a row are
            written as empty cells, keys not in `fieldnames` are dropped.
        fieldnames: sequence of str. Header and column order.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in fieldnames})
    write_text_atomic(path, buffer.getvalue())


def read_csv(path):
    """Read a CSV file as a list of dicts (empty cells as '').

    Args:
        path: str or `pathlib.Path`. A UTF-8 CSV file with a header row.

    Returns:
        list of dict. One dict per row, keyed by the header; all values are str.

    Raises:
        FileNotFoundError: if `path` does not exist.
    """
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_image_grid(tiles, path, columns):
    """Write equal-sized BGR tiles as one PNG grid (row by row, blank tiles fill the last row), atomically.

    Args:
        tiles: list of (H, W, 3) uint8 arrays of one shape.
        path: str or Path of the PNG.
        columns: int. Tiles per row at most.

    Returns:
        Path, or None when there are no tiles (nothing written).
    """
    import cv2
    import numpy as np

    if not tiles:
        return None
    tiles = list(tiles)
    columns = min(columns, len(tiles))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
    with atomic_path(path) as tmp:
        cv2.imwrite(tmp + ".png", grid)
        Path(tmp + ".png").replace(tmp)
    return Path(path)
