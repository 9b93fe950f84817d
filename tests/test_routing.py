"""Per-campaign Call Loop routing: CALLLOOP_ROUTES, the default group, skipped opt-ins,
start-up checks, and the route kept on the job."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings
from tests.conftest import GROUP_KEY, Api, ApiFactory, Fakes, opt_in_payload, wait_until

SPRING_KEY = "grpSpring41"
FALL_KEY = "grpFall52"
VIP_KEY = "grpVip63"
SECRET = "s3cr3tGroupKey"
# A secret set next to the table, so a message that echoed the raw input would show it.
SECRET_GROUP_URL = f"https://www.callloop.com/r/?{SECRET}"


def routes(fakes: Fakes, **keys: str) -> str:
    """CALLLOOP_ROUTES JSON: route name -> a group URL on the fake Call Loop."""
    return json.dumps({name: {"group_url": group_url(fakes, key)} for name, key in keys.items()})


def group_url(fakes: Fakes, key: str) -> str:
    return f"{fakes.callloop.base_url}/r/?{key}"


def adds_to(fakes: Fakes, key: str) -> list[Any]:
    return [
        call
        for call in fakes.callloop.state.received("/r/")
        if call.raw_query.split(b"&")[0] == key.encode()
    ]


async def stored_opt_in(api: Api, payload: dict[str, Any]) -> dict[str, Any]:
    response = await api.webhook(payload)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stored"
    listing = (await api.admin_get("/v1/opt-ins", contact=payload["contact"])).json()
    [item] = [i for i in listing["items"] if i["webhook_id"] == payload["webhook_id"]]
    detail = (await api.admin_get(f"/v1/opt-ins/{item['id']}")).json()
    return dict(detail)


async def test_opt_in_is_routed_by_utm_campaign(make_api: ApiFactory, fakes: Fakes) -> None:
    api = await make_api(callloop_routes=routes(fakes, spring=SPRING_KEY, fall=FALL_KEY))
    opt_in = await stored_opt_in(api, opt_in_payload(contact="+15555550201", utm_campaign="spring"))
    assert opt_in["route_key"] == "spring"
    [job] = opt_in["deliveries"]
    assert job["kind"] == "subscribe" and job["route_key"] == "spring"
    [call] = await wait_until(lambda: adds_to(fakes, SPRING_KEY))
    assert call.raw_query == f"{SPRING_KEY}&phone=%2B15555550201".encode()
    assert adds_to(fakes, FALL_KEY) == [] and adds_to(fakes, GROUP_KEY) == []


async def test_list_parameter_wins_when_it_names_a_route(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(callloop_routes=routes(fakes, spring=SPRING_KEY, vip=VIP_KEY))
    by_list = await stored_opt_in(
        api, opt_in_payload(contact="+15555550202", utm_campaign="spring", list="vip")
    )
    assert by_list["route_key"] == "vip"
    # A `list` that names no route falls back to utm_campaign.
    by_campaign = await stored_opt_in(
        api, opt_in_payload(contact="+15555550203", utm_campaign="spring", list="nope")
    )
    assert by_campaign["route_key"] == "spring"
    await wait_until(lambda: adds_to(fakes, VIP_KEY) and adds_to(fakes, SPRING_KEY))
    assert [c.raw_query for c in adds_to(fakes, VIP_KEY)] == [
        f"{VIP_KEY}&phone=%2B15555550202".encode()
    ]
    assert [c.raw_query for c in adds_to(fakes, SPRING_KEY)] == [
        f"{SPRING_KEY}&phone=%2B15555550203".encode()
    ]


async def test_unmatched_opt_in_goes_to_the_default_group(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(callloop_routes=routes(fakes, spring=SPRING_KEY))
    opt_in = await stored_opt_in(
        api, opt_in_payload(contact="+15555550204", utm_campaign="winter", list="other")
    )
    assert opt_in["route_key"] == "default"
    [call] = await wait_until(lambda: adds_to(fakes, GROUP_KEY))
    assert call.raw_query == f"{GROUP_KEY}&phone=%2B15555550204".encode()
    assert adds_to(fakes, SPRING_KEY) == []


async def test_no_route_and_no_default_stores_and_skips_with_reason(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(callloop_group_url=None, callloop_routes=routes(fakes, spring=SPRING_KEY))
    opt_in = await stored_opt_in(api, opt_in_payload(contact="+15555550205", utm_campaign="winter"))
    assert opt_in["route_key"] is None
    [job] = opt_in["deliveries"]
    assert job["status"] == "skipped"
    assert "no Call Loop route" in job["last_error"]
    assert job["target"] is None
    # The same app still delivers a routed opt-in: the skipped one was never sent.
    await api.webhook(opt_in_payload(contact="+15555550206", utm_campaign="spring"))
    await wait_until(lambda: adds_to(fakes, SPRING_KEY))
    assert [c.raw_query for c in fakes.callloop.state.received()] == [
        f"{SPRING_KEY}&phone=%2B15555550206".encode()
    ]


async def test_route_trigger_fires_after_its_group_add(make_api: ApiFactory, fakes: Fakes) -> None:
    table = {
        "spring": {
            "group_url": group_url(fakes, SPRING_KEY),
            "trigger_url": f"{fakes.callloop.base_url}/t/?trigSpring",
        },
        "fall": {"group_url": group_url(fakes, FALL_KEY), "trigger_url": ""},
    }
    api = await make_api(
        callloop_routes=json.dumps(table),
        callloop_trigger_url=f"{fakes.callloop.base_url}/t/?trigDefault",
    )
    await api.webhook(opt_in_payload(contact="+15555550207", utm_campaign="spring"))
    await api.webhook(opt_in_payload(contact="+15555550208", utm_campaign="fall"))
    [trigger] = await wait_until(lambda: fakes.callloop.state.received("/t/"))
    assert trigger.raw_query == b"trigSpring&phone=%2B15555550207"
    await wait_until(lambda: _done_count(api, 3))
    assert len(fakes.callloop.state.received("/t/")) == 1  # the fall route has no trigger


async def _done_count(api: Api, count: int) -> bool:
    return len(await api.deliveries("done")) == count


async def test_route_is_kept_on_the_job_after_a_config_change(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    before = await make_api(run_worker=False, callloop_routes=routes(fakes, spring=SPRING_KEY))
    await before.webhook(opt_in_payload(contact="+15555550209", utm_campaign="spring"))
    [pending] = await before.deliveries("pending")
    assert pending["route_key"] == "spring"

    # Redeployed: "spring" now points at another group. The queued job still goes to the old one.
    after = await make_api(run_worker=True, callloop_routes=routes(fakes, spring=FALL_KEY))
    await wait_until(lambda: _done_count(after, 1))
    assert [c.raw_query for c in fakes.callloop.state.received("/r/")] == [
        f"{SPRING_KEY}&phone=%2B15555550209".encode()
    ]
    # A new opt-in made under the new config goes to the new group.
    await after.webhook(opt_in_payload(contact="+15555550210", utm_campaign="spring"))
    [call] = await wait_until(lambda: adds_to(fakes, FALL_KEY))
    assert call.raw_query == f"{FALL_KEY}&phone=%2B15555550210".encode()


async def test_two_campaigns_are_two_groups_and_a_repeat_is_no_second_add(
    make_api: ApiFactory, fakes: Fakes
) -> None:
    api = await make_api(callloop_routes=routes(fakes, spring=SPRING_KEY, fall=FALL_KEY))
    contact = "+15555550211"
    await api.webhook(opt_in_payload(contact=contact, utm_campaign="spring"))
    await api.webhook(opt_in_payload(contact=contact, utm_campaign="fall"))
    repeat = await stored_opt_in(api, opt_in_payload(contact=contact, utm_campaign="spring"))
    assert repeat["route_key"] == "spring"
    assert repeat["deliveries"] == []  # the repeat queued nothing
    await wait_until(lambda: _done_count(api, 2))
    assert len(adds_to(fakes, SPRING_KEY)) == 1
    assert len(adds_to(fakes, FALL_KEY)) == 1
    assert len(fakes.callloop.state.received("/r/")) == 2


BAD_ROUTES = [
    pytest.param("{not json", "CALLLOOP_ROUTES is not valid JSON", id="not-json"),
    pytest.param('["https://x.example/r/?a"]', "must be a JSON object", id="not-object"),
    pytest.param(
        {"spring": f"https://www.callloop.com/r/?{SECRET}"}, "CALLLOOP_ROUTES['spring']", id="str"
    ),
    pytest.param({"spring": {}}, "CALLLOOP_ROUTES['spring']: needs", id="no-group-url"),
    pytest.param(
        {
            "ok": {"group_url": "https://www.callloop.com/r/?fine"},
            "spring": {"group_url": f"https://www.callloop.com/x/?{SECRET}"},
        },
        "CALLLOOP_ROUTES['spring']: the group URL https://www.callloop.com… has no '/r/'",
        id="no-r-segment",
    ),
    pytest.param(
        {"spring": {"group_url": f"www.callloop.com/r/?{SECRET}"}},
        "CALLLOOP_ROUTES['spring']: the group URL <url> must start with https://",
        id="not-absolute",
    ),
    pytest.param(
        {
            "spring": {
                "group_url": "https://www.callloop.com/r/?g",
                "trigger_url": f"ftp://h/t/?{SECRET}",
            }
        },
        "CALLLOOP_ROUTES['spring']: the trigger URL",
        id="bad-trigger",
    ),
    pytest.param(
        {"spring": {"group_url": "https://www.callloop.com/r/?g", "trigger_url": 5}},
        "CALLLOOP_ROUTES['spring']: trigger_url must be a string",
        id="trigger-not-string",
    ),
    pytest.param(
        {"spring": {"group_url": "https://www.callloop.com/r/?g", "groupurl": SECRET}},
        "CALLLOOP_ROUTES['spring']: unknown fields ['groupurl']",
        id="unknown-field",
    ),
    pytest.param(
        {"": {"group_url": "https://www.callloop.com/r/?g"}},
        "CALLLOOP_ROUTES['']: the key must be",
        id="empty-key",
    ),
]


def _raw(table: object) -> str:
    return table if isinstance(table, str) else json.dumps(table)


@pytest.mark.parametrize(("table", "message"), BAD_ROUTES)
def test_bad_routing_table_is_refused_by_settings(table: object, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(  # type: ignore[call-arg]
            _env_file=None, callloop_routes=_raw(table), callloop_group_url=SECRET_GROUP_URL
        )
    text = str(refused.value)
    assert message in text
    assert SECRET not in text


@pytest.mark.parametrize(("table", "message"), BAD_ROUTES)
def test_bad_routing_table_stops_the_app_at_start_up(
    table: object, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here: the environment is the whole configuration
    monkeypatch.setenv("CALLLOOP_ROUTES", _raw(table))
    monkeypatch.setenv("CALLLOOP_GROUP_URL", SECRET_GROUP_URL)
    monkeypatch.setenv("LOOP_API_KEY", f"key-{SECRET}")
    with pytest.raises(ValidationError) as refused:
        create_app()
    text = str(refused.value)
    assert message in text
    assert SECRET not in text


def test_good_routing_table_is_accepted() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        callloop_routes=json.dumps(
            {
                "spring": {"group_url": "https://www.callloop.com/r/?s"},
                "vip": {
                    "group_url": "https://www.callloop.com/r/?v",
                    "trigger_url": "https://api.callloop.com/webhook/Custom/abc",
                },
            }
        ),
    )
    assert settings.routes["spring"].group_url == "https://www.callloop.com/r/?s"
    assert settings.routes["spring"].trigger_url is None
    assert settings.routes["vip"].trigger_url == "https://api.callloop.com/webhook/Custom/abc"
    assert settings.default_route is None
