"""The errors hwflow reports to its users.

Every error a user can cause (a bad file, an impossible configuration, a program built for
another machine) is a :class:`HwflowError` whose message names the bad value and what is
allowed. The CLI prints the message on one line and exits with code 2; library callers catch
the class they care about.
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "ConfigError",
    "HwflowError",
    "ProgramError",
    "SyncError",
    "UnsupportedError",
]


class HwflowError(Exception):
    """Base class: an error caused by the user's input, reported as one clear line."""


class ConfigError(HwflowError):
    """A configuration file or value is malformed, unknown or out of range."""


class UnsupportedError(HwflowError):
    """A valid request that hwflow (or the chosen hardware preset) does not support."""


class CapacityError(HwflowError):
    """A model or tile does not fit the on-chip buffers or the HBM of the preset."""


class ProgramError(HwflowError):
    """A program file is corrupt, of another ISA version, or compiled for another preset."""


class SyncError(HwflowError):
    """A program breaks its own dependency-token discipline (a hazard or a deadlock)."""
