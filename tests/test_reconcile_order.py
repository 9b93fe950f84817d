"""Reconcile never lets an old event override a newer one: a recovered opt-in older than the
contact's opt-out stays history, and a recovered STOP older than the latest opt-in is ignored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import Api, Fakes, opt_in_payload, wait_until
from tests.test_cli import arun_cli, cli_env, history_item, stop_message, workdir  # noqa: F401


def window(start: datetime) -> list[str]:
    return ["--since", start.isoformat(), "--until", datetime.now(UTC).isoformat()]


async def test_recovered_opt_in_older_than_the_stop_stays_history(
    api: Api,
    fakes: Fakes,
    db_url: str,
    workdir: Path,  # noqa: F811
) -> None:
    earlier = datetime.now(UTC) - timedelta(hours=2)
    contact = "+15555550311"
    # Live: the contact opted in and then texted STOP; both reached us.
    await api.webhook(opt_in_payload(contact=contact, click_id="live"))
    await wait_until(lambda: fakes.callloop.state.received("/r/"))
    assert (await api.webhook(stop_message(contact))).json()["status"] == "opted_out"
    await wait_until(lambda: fakes.callloop.state.received("/s/"))
    # History holds an opt-in of theirs from before the STOP that we never received.
    missed = opt_in_payload(contact=contact, click_id="missed")
    fakes.loop.state.history_pages = [
        {
            "data": [
                history_item(
                    missed, (earlier + timedelta(minutes=5)).isoformat(), "message_inbound", True
                )
            ],
            "total": 1,
        }
    ]
    env = cli_env(db_url, fakes)
    report = json.loads(
        (await arun_cli("reconcile", *window(earlier), env=env, cwd=workdir)).stdout
    )
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
    earlier = datetime.now(UTC) - timedelta(hours=2)
    contact = "+15555550312"
    await api.webhook(opt_in_payload(contact=contact, click_id="live"))
    await wait_until(lambda: fakes.callloop.state.received("/r/"))
    fakes.loop.state.history_pages = [
        {
            "data": [
                history_item(
                    stop_message(contact),
                    (earlier + timedelta(minutes=1)).isoformat(),
                    "message_inbound",
                    False,
                )
            ],
            "total": 1,
        }
    ]
    env = cli_env(db_url, fakes)
    report = json.loads(
        (await arun_cli("reconcile", *window(earlier), env=env, cwd=workdir)).stdout
    )
    assert report["outcomes"] == {"recorded": 1}
    assert fakes.callloop.state.received("/s/") == []
    out = await api.admin_post(f"/v1/subscribers/{contact}/opt-out")
    assert out.json()["opt_out_jobs"] == 1  # still in its group: the old STOP changed nothing
