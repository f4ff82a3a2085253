"""TIMER triggers: fire on schedule as asynchronous invocations with FunctionGraph's timer event."""

from __future__ import annotations

import json
import time

from tests.conftest import Api

ECHO = "def handler(event, context):\n    print('EVENT ' + __import__('json').dumps(event))\n    return 'ok'\n"


def timer(name: str, schedule: str, schedule_type: str = "Cron", **extra) -> dict:
    return {
        "trigger_type_code": "TIMER",
        "trigger_status": extra.pop("status", "ACTIVE"),
        "event_data": {"name": name, "schedule_type": schedule_type, "schedule": schedule, **extra},
    }


def fired(api: Api, name: str) -> list[dict]:
    logs = api.http.get(f"/functions/{name}/logs", params={"limit": 1000}).json()["logs"]
    return [json.loads(line["message"][6:]) for line in logs if line["message"].startswith("EVENT ")]


def test_every_second_timer_fires_about_once_a_second_and_stops_when_disabled(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    response = api.http.post(f"/triggers/{name}", json=timer("Timer_001", "@every 1s", user_event="hello"))
    assert response.status_code == 201, response.text
    trigger = response.json()
    time.sleep(3.6)
    events = fired(api, name)
    assert 2 <= len(events) <= 5
    event = events[0]
    assert set(event) == {"version", "time", "trigger_type", "trigger_name", "user_event"}
    assert (event["version"], event["trigger_type"], event["trigger_name"], event["user_event"]) == (
        "v1.0",
        "TIMER",
        "Timer_001",
        "hello",
    )
    path = f"/triggers/{name}/TIMER/{trigger['trigger_id']}"
    assert api.http.put(path, json={"trigger_status": "DISABLED"}).json()["trigger_status"] == "DISABLED"
    time.sleep(0.5)
    count = len(fired(api, name))
    time.sleep(2.0)
    assert len(fired(api, name)) == count
    assert api.http.get(path).json()["trigger_status"] == "DISABLED"
    assert [t["trigger_id"] for t in api.http.get(f"/triggers/{name}").json()] == [trigger["trigger_id"]]
    assert api.http.delete(path).status_code == 204
    assert api.http.get(path).status_code == 404


def test_invalid_timers_are_400_saying_why(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    for body, words in [
        (timer("t1", "0 61 * * * *"), "not valid"),
        (timer("t2", "61m", "Rate"), "1-60"),
        (timer("t3", "CRON_TZ=Nowhere/Place 0 0 * * * *"), "time zone"),
        (timer("9bad", "1m", "Rate"), "name"),
        ({"trigger_type_code": "KAFKA", "event_data": {}}, "trigger_type_code"),
    ]:
        response = api.http.post(f"/triggers/{name}", json=body)
        assert response.status_code == 400, body
        assert words in response.json()["error_msg"], response.json()["error_msg"]
    assert api.http.get(f"/triggers/{name}").json() == []


def test_deleting_the_function_deletes_its_triggers(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    trigger = api.http.post(f"/triggers/{name}", json=timer("t", "1h", "Rate")).json()
    api.http.delete(f"/functions/{name}")
    api.deploy(ECHO, name=name)
    assert api.http.get(f"/triggers/{name}").json() == []
    assert api.http.get(f"/triggers/{name}/TIMER/{trigger['trigger_id']}").status_code == 404


def test_timers_that_never_fire_or_have_unknown_shapes_are_400_naming_the_field(api: Api) -> None:
    name = api.deploy(ECHO)["func_name"]
    for body, words in [
        (timer("feb30", "0 0 0 30 2 ?"), "event_data.schedule"),
        (timer("apr31", "0 0 0 31 4,6,9,11 ?"), "never fires"),
        (timer("long", "@every 9999h"), "event_data.schedule"),
        (timer("huge", "9" * 30 + "m", "Rate"), "event_data.schedule"),
        (timer("weekly", "1", "Weekly"), "event_data.schedule_type"),
        ({"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Cron"}}, "event_data.schedule"),
        (
            {"trigger_type_code": "TIMER", "event_data": {**timer("t", "1m", "Rate")["event_data"], "x": 1}},
            "event_data.x",
        ),
        ({"trigger_type_code": "TIMER", "event_data": ["not", "an", "object"]}, "event_data"),
        (
            {"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Cron", "schedule": 5}},
            "event_data.schedule",
        ),
    ]:
        response = api.http.post(f"/triggers/{name}", json=body)
        assert response.status_code == 400, (body, response.text)
        assert words in response.json()["error_msg"], response.json()["error_msg"]
    assert api.http.get(f"/triggers/{name}").json() == []
    # Changing a good timer to a bad shape is refused the same way, and the timer is unchanged.
    trigger = api.http.post(f"/triggers/{name}", json=timer("good", "1h", "Rate")).json()
    path = f"/triggers/{name}/TIMER/{trigger['trigger_id']}"
    for body, words in [
        ({"event_data": ["x"]}, "event_data"),
        ({"event_data": {"schedule_type": "Cron", "schedule": "0 0 0 30 2 ?"}}, "never fires"),
        ({"event_data": {"schedule": "@every 0s"}}, "event_data.schedule"),
    ]:
        response = api.http.put(path, json=body)
        assert response.status_code == 400, (body, response.text)
        assert words in response.json()["error_msg"], response.json()["error_msg"]
    assert api.http.get(path).json()["event_data"]["schedule"] == "1h"
