"""Reconcile never lets an old event override a newer one: a recovered opt-in older than the
contact's opt-out stays history, and a recovered STOP older than the latest opt-in is ignored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import Api, Fakes, opt_in_payload, wait_until
from tests.test_cli import arun_cli, cli_env, history_item, stop_message, workdir  # noqa: F401


async def reconcile_one(
    fakes: Fakes, db_url: str, cwd: Path, payload: dict[str, Any], as_text: bool
) -> dict[str, Any]:
    """Serve one history item created two hours ago, run `reconcile` over it, return the report."""
    earlier = datetime.now(UTC) - timedelta(hours=2)
    created = (earlier + timedelta(minutes=1)).isoformat()
    fakes.loop.state.history_pages = [
        {"data": [history_item(payload, created, "message_inbound", as_text)], "total": 1}
    ]
    window = ["--since", earlier.isoformat(), "--until", datetime.now(UTC).isoformat()]
    result = await arun_cli("reconcile", *window, env=cli_env(db_url, fakes), cwd=cwd)
    return dict(json.loads(result.stdout))


async def live_opt_in(api: Api, fakes: Fakes, contact: str) -> None:
    await api.webhook(opt_in_payload(contact=contact, click_id="live"))
    await wait_until(lambda: fakes.callloop.state.received("/r/"))


async def test_recovered_opt_in_older_than_the_stop_stays_history(
    api: Api,
    fakes: Fakes,
    db_url: str,
    workdir: Path,  # noqa: F811
) -> None:
    contact = "+15555550311"
    # Live: the contact opted in and then texted STOP; both reached us.
    await live_opt_in(api, fakes, contact)
    assert (await api.webhook(stop_message(contact))).json()["status"] == "opted_out"
    await wait_until(lambda: fakes.callloop.state.received("/s/"))
    # History holds an opt-in of theirs from before the STOP that we never received.
    missed = opt_in_payload(contact=contact, click_id="missed")
    report = await reconcile_one(fakes, db_url, workdir, missed, as_text=True)
    assert report["outcomes"] == {"superseded": 1}
    listing = (await api.admin_get("/v1/opt-ins", contact=contact)).json()
    assert listing["total"] == 2  # the recovered opt-in is kept as history
    adds = [job for job in await api.deliveries() if job["kind"] == "subscribe"]
    assert len(adds) == 1  # not queued again: the later STOP stands


async def test_recovered_stop_older_than_the_latest_opt_in_is_ignored(
    api: Api,
    fakes: Fakes,
    db_url: str,
    workdir: Path,  # noqa: F811
) -> None:
    contact = "+15555550312"
    await live_opt_in(api, fakes, contact)
    report = await reconcile_one(fakes, db_url, workdir, stop_message(contact), as_text=False)
    assert report["outcomes"] == {"recorded": 1}
    assert fakes.callloop.state.received("/s/") == []
    out = await api.admin_post(f"/v1/subscribers/{contact}/opt-out")
    assert out.json()["opt_out_jobs"] == 1  # still in its group: the old STOP changed nothing
