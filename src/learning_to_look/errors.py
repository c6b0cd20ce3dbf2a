"""One exception type for problems the user can fix.

The CLI turns it into a single line on stderr and exit code 2, so every message
must name the problem and the fix.
"""

from __future__ import annotations

import os


class L2LError(Exception):
    """A user-fixable problem: bad input, missing data, corrupt file."""


def corrupt_file(path: str | os.PathLike, reason: str, fix: str = "delete it and rerun the command") -> L2LError:
    """The error for a file that exists but cannot be read as what it should be."""
    return L2LError(f"{path} is corrupt or unreadable ({reason}); {fix}")


def os_error(e: OSError) -> L2LError:
    """An OSError (permission, read-only disk, a file where a folder should be) as one line
    naming the path and the reason."""
    where = e.filename or "a file"
    reason = e.strerror or type(e).__name__
    return L2LError(f"cannot write or read {where}: {reason}; pick a folder you can write to "
                    "(e.g. --out, --runs-dir, --data-dir) or fix its permissions")
