"""`optin-backend retry-dead`: the operator's way back for dead jobs, without the admin API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import Api, Fakes, opt_in_payload, wait_until
from tests.fakes.servers import Scripted


async def retry_dead(db_url: str, cwd: Path, *job_ids: int) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "retry-dead", "--url", db_url, *map(str, job_ids)],
        cwd=cwd,  # no .env here
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_retry_delivers_a_dead_job(
    api: Api, fakes: Fakes, db_url: str, tmp_path: Path
) -> None:
    fakes.callloop.state.always(Scripted(500, text="down"))
    await api.webhook(opt_in_payload(contact="+12025550777"))
    [dead] = await wait_until(lambda: api.deliveries("dead"))
    fakes.callloop.state.always(None)  # Call Loop is back

    unknown = await retry_dead(db_url, tmp_path, 987654)
    assert unknown.returncode == 1 and unknown.stdout.startswith("0 dead job(s)")

    done = await retry_dead(db_url, tmp_path, int(dead["id"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 dead job(s)")

    async def delivered() -> bool:
        return len(await api.deliveries("done")) == 1

    await wait_until(delivered)
    assert len(fakes.callloop.state.received("/r/")) == api.settings.delivery_max_attempts + 1
