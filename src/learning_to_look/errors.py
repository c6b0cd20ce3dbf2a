"""One exception type for problems the user can fix.

The CLI turns it into a single line on stderr and exit code 2, so every message
must name the problem and the fix.
"""


class L2LError(Exception):
    """A user-fixable problem: bad input, missing data, corrupt file."""
