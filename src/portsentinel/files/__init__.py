"""Files the program is given, read safely: a regular file or a clear refusal, never more than
a cap (``files/regular.py``). Every reader of a file named by the admin or the host goes
through here; the room imports nothing of the project, so that every other room may use it.
"""

from portsentinel.files.regular import (
    KIB,
    MIB,
    FileRefused,
    absent,
    check_regular,
    open_regular,
    read_regular,
)

__all__ = [
    "KIB",
    "MIB",
    "FileRefused",
    "absent",
    "check_regular",
    "open_regular",
    "read_regular",
]
