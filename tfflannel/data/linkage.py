"""Link patient ids that share a film, so that one person never lands in two partitions.

Public collections list some films under several patient ids, and sources re-publish
films at other sizes and compressions under new ids. Two patient ids are linked when
they share an identical file (same sha256) or a near-identical film: a 64-bit
difference hash (dHash, Krawetz 2013: the sign of horizontal gradients of a 9x8
area-averaged thumbnail) within `max_distance` bits is the candidate filter, and the
Pearson correlation of 64x64 grey thumbnails >= `min_correlation` confirms it. The
linked ids form connected components (union-find); each component is one `group_id`,
the unit of the split.

Both fingerprints are computed from the decoded array in the pass that already
decodes every image (`fingerprint_image`), so linking reads no file twice.
"""

from __future__ import annotations

import dataclasses

import numpy as np

HASH_WIDTH = 9          # 9 columns -> 8 horizontal differences per row
HASH_HEIGHT = 8         # 8 rows -> 64 bits
THUMB_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Link:
    """Two films that tie their patient ids together.

    Attributes:
        kind: str. `"identical"` (same sha256) or `"near-identical"` (dHash and correlation).
        image_a: str. image_id of the first film (the kept copy for identical files).
        image_b: str. image_id of the second film.
        patient_a: str. Patient id of `image_a`.
        patient_b: str. Patient id of `image_b`.
        label_a: str. Label of `image_a`.
        label_b: str. Label of `image_b`.
        distance: int. Hamming distance of the two dHashes (0 for identical files).
        correlation: float. Pearson correlation of the 64x64 thumbnails (1.0 for identical files).
    """

    kind: str
    image_a: str
    image_b: str
    patient_a: str
    patient_b: str
    label_a: str
    label_b: str
    distance: int
    correlation: float


def fingerprint_image(image):
    """The dHash and the grey thumbnail of one decoded film.

    Args:
        image: `(H, W)` uint8 array. A decoded grey film (`tfflannel.data.io.read_image`).

    Returns:
        (dhash, thumbnail): dhash is an int in [0, 2**64), bit 63 first (row-major over the 8x8
        comparisons "pixel left < pixel right", on the thumbnail area-averaged to 9x8); thumbnail is
        a `(64, 64)` uint8 array area-averaged (Pillow BOX) from the whole film, so resizing and
        recompression barely move either. One resize of the full film serves both.
    """
    from PIL import Image

    thumbnail = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        (THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    small = np.asarray(thumbnail.resize((HASH_WIDTH, HASH_HEIGHT), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    dhash = int(np.packbits(bits).view(">u8")[0])
    return dhash, np.asarray(thumbnail, dtype=np.uint8)


def hamming_candidates(hashes, max_distance, chunk=512):
    """All pairs of hashes within `max_distance` bits, by a chunked, vectorised popcount.

    Every row block is XORed against the hashes after it (`numpy.bitwise_count`), so the work is
    n^2/2 machine words in NumPy, not Python: under a second for 7,000 films on 2 cores.

    Args:
        hashes: sequence of int or uint64 array. One 64-bit hash per film.
        max_distance: int. Largest Hamming distance kept, in [0, 64].
        chunk: int. Rows per block (memory about `9 * chunk * n` bytes). Defaults to `512`.

    Returns:
        (i, j, distance): int arrays with i < j, sorted by (i, j).
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(hashes), chunk):
        rows = hashes[start:start + chunk]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, start:])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i                                     # column 0 is row `start` itself
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
        found_d.append(distance[i[keep], j[keep]])
    if not found_i:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    return (np.concatenate(found_i).astype(int), np.concatenate(found_j).astype(int),
            np.concatenate(found_d).astype(int))


def thumbnail_correlation(thumbnails, i, j, chunk=256):
    """Pearson correlation of the thumbnails of each pair (i[k], j[k]); 0 where one is constant.

    The thumbnails of the films in a pair are standardised once (float32). The pairs are then taken
    `chunk` first films at a time: one BLAS product of those films against all their partners gives
    every needed dot product (far faster than gathering two 4,096-vectors per pair: 2.7 M candidate
    pairs of 6,806 films in a few seconds on 2 cores).

    Args:
        thumbnails: `(N, 64, 64)` uint8 array (or a list of such arrays).
        i: int array. First film of each pair.
        j: int array. Second film of each pair.
        chunk: int. First films per block (memory about `chunk * N * 4` bytes). Defaults to `256`.

    Returns:
        float64 array of correlations in [-1, 1].
    """
    i, j = np.asarray(i, int), np.asarray(j, int)
    correlation = np.zeros(len(i), np.float64)
    if len(i) == 0:
        return correlation
    used, inverse = np.unique(np.concatenate([i, j]), return_inverse=True)   # only the films in a pair
    flat = np.stack([np.asarray(thumbnails[k], np.float32).ravel() for k in used])
    centred = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    unit = centred / np.where(norm > 0, norm, 1.0)[:, None]
    first, second = inverse[:len(i)], inverse[len(i):]
    order = np.argsort(first, kind="stable")
    firsts, seconds = first[order], second[order]
    rows = np.unique(firsts)
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]
        low, high = np.searchsorted(firsts, block[0], "left"), np.searchsorted(firsts, block[-1], "right")
        partners, column = np.unique(seconds[low:high], return_inverse=True)
        products = unit[block] @ unit[partners].T
        correlation[order[low:high]] = products[np.searchsorted(block, firsts[low:high]), column]
    valid = (norm[first] > 0) & (norm[second] > 0)
    return np.where(valid, np.clip(correlation, -1.0, 1.0), 0.0)


def near_identical_pairs(hashes, thumbnails, max_distance=8, min_correlation=0.97):
    """Pairs of films whose dHashes are within `max_distance` bits and thumbnails correlate >= `min_correlation`.

    Args:
        hashes: sequence of int. One dHash per film (`fingerprint_image`).
        thumbnails: `(N, 64, 64)` uint8 array. One thumbnail per film, same order.
        max_distance: int. Candidate filter on the Hamming distance. Defaults to `8`.
        min_correlation: float. Confirmation threshold. Defaults to `0.97`.

    Returns:
        list of (i, j, distance, correlation) with i < j, sorted.
    """
    i, j, distance = hamming_candidates(hashes, max_distance)
    if len(i) == 0:
        return []
    correlation = thumbnail_correlation(thumbnails, i, j)
    keep = correlation >= min_correlation
    return [(int(a), int(b), int(d), float(c)) for a, b, d, c in
            zip(i[keep], j[keep], distance[keep], correlation[keep], strict=True)]


def group_patients(patient_ids, links):
    """Connected components of patient ids joined by links (union-find via SciPy).

    Args:
        patient_ids: iterable of str. Every patient id to group (ids only in links are added).
        links: iterable of `Link` (or anything with `patient_a` and `patient_b`).

    Returns:
        dict patient_id -> group_id, the group_id being the smallest patient id of its component
        (an unlinked patient is its own group, so a collection without links splits as before).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    links = list(links)
    names = sorted(set(patient_ids) | {p for link in links for p in (link.patient_a, link.patient_b)})
    index = {name: k for k, name in enumerate(names)}
    rows = [index[link.patient_a] for link in links]
    cols = [index[link.patient_b] for link in links]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    smallest = {}
    for name, label in zip(names, component, strict=True):   # names are sorted: first seen is smallest
        smallest.setdefault(label, name)
    return {name: smallest[label] for name, label in zip(names, component, strict=True)}


def link_near_identical(records, hashes, thumbnails, max_distance=8, min_correlation=0.97):
    """`Link`s between near-identical films of distinct files.

    Args:
        records: list of dict. Manifest rows with `image_id`, `patient_id`, `label`.
        hashes: sequence of int. dHash of each record, same order.
        thumbnails: `(N, 64, 64)` uint8 array. Thumbnail of each record.
        max_distance: int. dHash Hamming distance limit. Defaults to `8`.
        min_correlation: float. Thumbnail correlation threshold. Defaults to `0.97`.

    Returns:
        list of `Link` of kind `"near-identical"`.
    """
    links = []
    for a, b, distance, correlation in near_identical_pairs(hashes, thumbnails, max_distance, min_correlation):
        first, second = records[a], records[b]
        links.append(Link("near-identical", first["image_id"], second["image_id"], first["patient_id"],
                          second["patient_id"], first["label"], second["label"], distance, correlation))
    return links
