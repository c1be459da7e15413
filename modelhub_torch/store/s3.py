"""The S3 requests fsspec's generic calls do not make: reads that return the ETag,
and conditional writes (``If-None-Match: *`` to create, ``If-Match: <etag>`` to
replace or delete), through s3fs's own client (``S3FileSystem._call_s3``).

A conditional write that loses comes back as HTTP 412 (PreconditionFailed), or 404
when an ``If-Match`` target is gone; both mean "another writer was first" and return
None here. S3 answers 409 (ConditionalRequestConflict) while a racing conditional
write to the same key is in flight: that one is retried, as AWS advises.
"""

from __future__ import annotations

import random
import time
from typing import Any

LOST = ("PreconditionFailed", "NoSuchKey", "404", "412")
RETRIED = ("ConditionalRequestConflict", "409")
ATTEMPTS = 5


def is_s3(fs: Any) -> bool:
    """Whether ``fs`` is s3fs (any S3-compatible server behind it)."""
    return type(fs).__module__.split(".")[0] == "s3fs"


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (it chains botocore's)."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code") or "") or None
    return None


def _run(fs: Any, coro: Any) -> Any:
    import fsspec.asyn

    return fsspec.asyn.sync(fs.loop, lambda: coro)


def get(fs: Any, path: str) -> tuple[bytes, str]:
    """A whole object and its ETag in one GET (s3fs's ``cat_file`` asks the size first)."""
    bucket, key, _ = fs.split_path(path)

    async def run() -> tuple[bytes, str]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await resp["Body"].read(), str(resp.get("ETag", ""))
        finally:
            resp["Body"].close()

    return _run(fs, run())


def put(fs: Any, path: str, data: bytes, *, if_match: str | None = None, create: bool = False) -> str | None:
    """PUT ``data``; with ``create`` only if no object is there, with ``if_match`` only
    if the object still has that ETag. The new ETag, or None when the condition failed."""
    bucket, key, _ = fs.split_path(path)
    cond = {"IfNoneMatch": "*"} if create else {"IfMatch": if_match} if if_match is not None else {}
    for attempt in range(ATTEMPTS):
        try:
            out = _run(fs, fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond))
        except FileExistsError:  # s3fs's translation of a failed If-None-Match
            return None
        except OSError as exc:
            code = error_code(exc)
            if code in LOST:
                return None
            if code in RETRIED and attempt + 1 < ATTEMPTS:
                time.sleep(0.05 * (attempt + 1) * random.random())
                continue
            raise
        finally:
            fs.invalidate_cache(path)
        return str(out.get("ETag", ""))
    raise AssertionError("unreachable")


def delete_if_match(fs: Any, path: str, etag: str) -> bool:
    """Delete the object only while it still has ``etag`` (S3's conditional delete;
    a server that ignores the header deletes unconditionally)."""
    bucket, key, _ = fs.split_path(path)
    try:
        _run(fs, fs._call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag))
    except OSError as exc:
        if error_code(exc) in LOST:
            return False
        raise
    finally:
        fs.invalidate_cache(path)
    return True
