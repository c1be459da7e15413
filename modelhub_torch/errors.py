"""One root error for everything the package raises on bad input or bad data.

Subclasses also inherit the matching builtin, so ``except KeyError`` around a ref
lookup keeps working for users who do not know our types.
"""

from __future__ import annotations


class ModelHubError(Exception):
    """Root of every error modelhub_torch raises on bad input or bad data."""


class RepositoryNotFoundError(ModelHubError, FileNotFoundError):
    """No repository at the given path or URL."""


class RepositoryExistsError(ModelHubError, FileExistsError):
    """``init`` was asked to create a repository where one already is."""


class RefNotFoundError(ModelHubError, KeyError):
    """A ref (``model@vN``, ``model@alias``, id prefix) names no version."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class AmbiguousRefError(ModelHubError, KeyError):
    """An id prefix matches more than one version."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorruptObjectError(ModelHubError, IOError):
    """A stored object is missing, truncated, or fails its checksum."""


class UnsupportedDtypeError(ModelHubError, TypeError):
    """A tensor dtype the codec cannot store bit-exactly."""


class PickleRequiredError(ModelHubError, TypeError):
    """A checkpoint holds objects that only pickle can store or restore."""


class FormatError(ModelHubError, ValueError):
    """A manifest, ref or codec config that this version cannot read."""


class NewerFormatError(FormatError):
    """An id or feature this version does not know: a newer modelhub_torch wrote it
    (the fix is to upgrade, not to repair)."""


class LockTimeoutError(ModelHubError, TimeoutError):
    """Another process held the repository lock for too long."""


class ConflictError(ModelHubError):
    """A conditional write lost to another writer too often (a ref, a tag, the
    settings), or a tag was not where the caller expected it: nothing was changed."""


class ModelHubURLError(ModelHubError, ValueError):
    """A ``modelhub://`` URL without ``#<ref>`` or with a part fsspec would misread."""


class ReadOnlyError(ModelHubError, PermissionError):
    """A write through ``modelhub://``: versions are made by commits, not file writes."""


class VersionNotFoundError(RefNotFoundError, FileNotFoundError):
    """A ``modelhub://`` URL whose ref names no version.

    A ``FileNotFoundError`` too, so fsspec and Lightning treat it as a missing file.
    """


class DQLError(ModelHubError, ValueError):
    """A query that does not parse, names an unknown field, or mixes types."""


class WriteFailedError(ModelHubError, OSError):
    """A write to the repository failed (disk full, quota, file size limit, permissions);
    nothing was half-written: the repository holds what it held before."""


class DamagedRepositoryError(ModelHubError):
    """``gc`` found damage it could lose data over; ``modelhub verify`` says what."""


class ModelHubWarning(UserWarning):
    """Something was repaired or skipped on the way (a damaged index rebuilt, a damaged
    version left out of a listing); the command itself went on."""


class DivergedError(ModelHubError, ValueError):
    """A push or pull found ``model@vN`` (or an alias) holding different versions on
    the two sides: histories diverged, and nothing of that transfer was written."""


class PartialVersionError(ModelHubError, IOError):
    """A version pulled with only its top byte planes was read in full, and the
    repository it came from cannot supply the rest."""


class HubRequestError(ModelHubError):
    """A hub refused a request or could not be reached; the message is the hub's own
    (what went wrong, what to do). ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class HubAuthError(HubRequestError, PermissionError):
    """401 (no token, or one the hub does not accept) or 403 (the token lacks the
    scope or does not cover the model)."""
