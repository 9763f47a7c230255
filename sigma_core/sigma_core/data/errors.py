"""The error type of bad input data: a dataset file, a bag, a label value.

Every message names the file, topic or value that is wrong and what to do, so
the command-line tools print it as one line and exit with status 2.
"""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data (a file that is missing, corrupt or holds values the dataset does not allow).

    Raised inside a ``torch.utils.data.DataLoader`` worker, it comes back to the main
    process re-built from the worker's formatted traceback ("Caught DataError in
    DataLoader worker process 0. Original Traceback ..."); the constructor keeps only
    the original message, so the user still reads one line naming the file.
    """

    def __init__(self, message: str = ""):
        super().__init__(_original_message(str(message), type(self)))


def _original_message(message: str, cls: type) -> str:
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    # the traceback's last entry reads "<module>.<QualName>: <original message>"
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    if marker not in message:
        return message
    return message.rsplit(marker, 1)[1].strip()
