"""Attacks on issue 15's warm path (direct invoke route, output poll, reserved starts at once)."""

from __future__ import annotations

import time

from tests.conftest import Api, b64, make_zip

SLOW_INIT_V = "import time\ndef init(context):\n    time.sleep(1.0)\ndef handler(e, c):\n    return '{v}'\n"


def test_an_update_while_a_reserved_instance_starts_runs_the_new_code(api: Api) -> None:
    # The reserved start began with the old code; the function is updated meanwhile and invoked at
    # once, with room for one instance only: the request must not be handed the old code's instance.
    name = api.deploy(SLOW_INIT_V.format(v="old"), initializer_handler="index.init", initializer_timeout=10)[
        "func_name"
    ]
    assert api.http.put(f"/functions/{name}/config-max-instance", json={"max_instance_num": 1}).status_code == 200
    assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1}).status_code == 200
    time.sleep(0.4)  # the reserved instance is in its initializer
    body = {"code_type": "zip", "func_code": {"file": b64(make_zip({"index.py": SLOW_INIT_V.format(v="new")}))}}
    assert api.http.put(f"/functions/{name}/code", json=body).status_code == 200
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    assert response.text == "new"
    api.http.put(f"/functions/{name}/reservedinstances", json={"count": 0})
