"""Static files the service serves to browsers (the drop-in script), with long cache lifetimes.

Every file under app/static/ carries its version in its name (`optin-v1.js`): a change ships
as a new name, so a served file never changes and browsers may keep it for a year.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"


class ImmutableStaticFiles(StaticFiles):
    """StaticFiles whose answers may be cached for a year and loaded by any page."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = IMMUTABLE
        return response


def static_files() -> ImmutableStaticFiles:
    return ImmutableStaticFiles(directory=STATIC_DIR)
