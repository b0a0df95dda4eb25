"""The cache names of the datasets maps that format and tokenize rows, and the fingerprint of the
rows a run trains on.

datasets stores a map's result under a name made from the dataset's and a hash of the function
and its arguments. A function of an installed package is hashed by its name, not its code, so
after an upgrade (or an edit) rows cached by the old code would be read back as if the new code
had made them: a fixed formatting bug would stay in the training data, silently. map_rows adds
a hash of this package's source to the name, so any change to the code makes new rows.
"""

import functools
import hashlib
import pathlib

import numpy
import pyarrow
from datasets.fingerprint import Hasher

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


@functools.cache
def code_fingerprint():
    """A hash of every module of this package (the formatting code reaches into many of them)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def map_rows(dataset, function, **kwargs):
    """dataset.map(function, **kwargs), cached under a name that also holds code_fingerprint()."""
    settings = {key: value for key, value in kwargs.items() if key != "desc"}  # the progress label changes nothing
    fingerprint = Hasher.hash([dataset._fingerprint, function, settings, code_fingerprint()])
    return dataset.map(function, new_fingerprint=fingerprint, **kwargs)


def is_number(arrow_type):
    return pyarrow.types.is_integer(arrow_type) or pyarrow.types.is_floating(arrow_type)


def is_token_column(arrow_type):
    """Numbers or lists of numbers: token ids, labels, masks, lengths (what the collator reads)."""
    return is_number(arrow_type) or (pyarrow.types.is_list(arrow_type) and is_number(arrow_type.value_type))


def hash_arrow(digest, array):
    """Feed a token column's rows to digest, the same bytes however the rows come in batches: a
    number as its bytes, a list as its length and its items."""
    if is_number(array.type):
        digest.update(array.to_numpy(zero_copy_only=False).tobytes())
        return
    offsets = array.offsets.to_numpy()
    offsets = offsets - offsets[0]
    values = array.flatten().to_numpy(zero_copy_only=False)
    for start, end in zip(offsets[:-1], offsets[1:]):
        digest.update(numpy.int64(end - start).tobytes() + values[start:end].tobytes())


def rows_fingerprint(dataset, batch_size=10_000):
    """'N rows, sha256 H': the row count and a hash of the token columns of the rows as the Trainer
    reads them (token ids, labels, masks, lengths), in order; the text they were made from counts
    only through them. A resume compares it with the run's first start, so that a data file
    edited, extended or regenerated in between is noticed: the seeded order would otherwise go on
    over other rows, silently."""
    features = dataset.data.schema
    columns = {name: hashlib.sha256() for name in sorted(dataset.column_names)
               if is_token_column(features.field(name).type)}
    for batch in dataset.with_format("arrow").iter(batch_size=batch_size):
        for name, digest in columns.items():
            hash_arrow(digest, batch.column(name).combine_chunks())
    digest = hashlib.sha256()
    for name, column in columns.items():
        digest.update(name.encode() + column.digest())
    return f"{len(dataset)} rows, sha256 {digest.hexdigest()[:16]}"
