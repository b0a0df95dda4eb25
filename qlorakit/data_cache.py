"""The cache names of the datasets maps that format and tokenize rows.

datasets stores a map's result under a name made from the dataset's and a hash of the function
and its arguments. A function of an installed package is hashed by its name, not its code, so
after an upgrade (or an edit) rows cached by the old code would be read back as if the new code
had made them: a fixed formatting bug would stay in the training data, silently. map_rows adds
a hash of this package's source to the name, so any change to the code makes new rows.
"""

import functools
import hashlib
import pathlib

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
