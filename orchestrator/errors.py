"""Errors of the controller itself (per-host trouble lives in ``remote.errors``).

CaptureAllError         base
├── UsageError          bad input from the user: exit status 2, one line, no traceback
│   ├── InventoryError  the inventory file is missing, not TOML, or fails validation
│   └── FlowError       the --flow text cannot be parsed
└── BundleError         the output folder cannot be created or written
"""

from __future__ import annotations


class CaptureAllError(Exception):
    pass


class UsageError(CaptureAllError):
    pass


class InventoryError(UsageError):
    pass


class FlowError(UsageError):
    pass


class BundleError(CaptureAllError):
    pass
