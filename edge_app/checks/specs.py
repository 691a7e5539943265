"""A runtime named as pip writes it, ``NAME==VERSION``: names normalised and versions compared as pip
does, as far as runtime releases go (``tflite-runtime==2.14`` is ``tflite_runtime==2.14.0``). Plain
strings only: the op table and the loads that these specs are matched against are ``checks.targets``'."""

from __future__ import annotations

import re
from collections.abc import Iterable


def same_version(a: str, b: str) -> bool:
    """2.14 == 2.14.0, 2.5.0.post1 == 2.5.post1; a suffix (post1, rc0) must agree."""

    def key(v: str):
        m = re.fullmatch(r"v?(\d+(?:\.\d+)*)(.*)", v.strip().lower())
        if m is None:
            return v.strip().lower()
        release = [int(x) for x in m.group(1).split(".")]
        while len(release) > 1 and release[-1] == 0:  # trailing zeros say nothing
            release.pop()
        return tuple(release), m.group(2).lstrip(".-_")

    return key(a) == key(b)


def normalise(spec: str, known: Iterable[str] = ()) -> str:
    """``spec`` with its name as pip normalises it (lower case, runs of -_. as one -) and its version spelled
    as that of the equal one among ``known`` specs (2.14 becomes a known 2.14.0); as given where none is."""
    name, sep, version = spec.partition("==")
    name = re.sub(r"[-_.]+", "-", name.strip()).lower()
    if not sep:
        return name
    for k in known:
        k_name, _, k_version = k.partition("==")
        if k_name == name and same_version(k_version, version):
            return k
    return f"{name}=={version.strip()}"


def is_loaded(spec: str, loaded: str) -> bool:
    """Whether ``spec`` (a name, or NAME==VERSION) names the runtime a load reported as ``loaded`` (NAME==VERSION)."""
    name, _, version = spec.partition("==")
    l_name, _, l_version = loaded.partition("==")
    return name == l_name and (not version or same_version(version, l_version))
