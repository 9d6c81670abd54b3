"""Warnings that are not ours to show: a dependency's deprecation notices are addressed to its
callers' developers (us), not to the engineer running ``capture-all`` during an incident.

Only the ``capture-all`` command installs these filters (``cli.entry``); importing the packages
changes nothing. A warning our own code triggers is attributed to our module (a deprecated call
warns at the caller, ``stacklevel=2``) and still shows, as does every other category a dependency
raises. The test suite keeps its own list (pyproject.toml, ``filterwarnings``)."""

from __future__ import annotations

import warnings

# The distributions we install and import (pyproject's dependencies and extras, and what they import
# in turn), by their top-level module. A warning's module is the one whose code it is attributed to.
DEPENDENCIES = ("asyncssh", "cryptography", "cffi", "anyio", "sniffio", "idna", "pydantic", "pydantic_core",
                "typing_extensions", "typing_inspection", "annotated_types", "numpy", "numba", "llvmlite",
                "yaml", "tomli")  # fmt: skip
MODULES = rf"(?:{'|'.join(DEPENDENCIES)})(?:\..*)?\Z"


STANDARD: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _cryptography() -> tuple[type[Warning], ...]:
    """cryptography's own category, a ``UserWarning``: cryptography 51 raises it when asyncssh 2.24
    names its DSA key types at import (ten lines on every capture). About 1 ms: typing, which it
    needs, is loaded already. Its own notices at import are of that category, which cannot be named
    before the import."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # pragma: no cover - asyncssh requires cryptography
        return ()
    return (CryptographyDeprecationWarning,)


def quiet_dependencies() -> None:
    """Ignore the dependencies' deprecation notices (by category, and by the module they are
    attributed to), before anything of theirs is imported."""
    for category in STANDARD:
        warnings.filterwarnings("ignore", category=category, module=MODULES)
    for category in _cryptography():
        warnings.filterwarnings("ignore", category=category, module=MODULES)
