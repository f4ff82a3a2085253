"""Attacker pass on the scheduler's riders (issue 15), from a function whose instances fail to start.

Requests arriving while an instance starts now wait for its spare slots. A function whose
initializer raises, exits or hangs makes every start fail: the requests riding on it must be
told at once to ask again (never left waiting until max_wait and then told the function was
busy), and other functions must be served meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest

from fgd.scheduler import Quota, Scheduler, Start, Wait
from tests.conftest import Api, running

F1 = ("default", "f1", "latest")
F2 = ("default", "f2", "latest")


def test_fifty_riders_of_a_failed_start_all_ask_again_and_others_are_not_held_up() -> None:
    s = Scheduler(lambda: 0.0, 10**6)
    quota = Quota(max_instances=-1, slots=100, memory_mb=128, queue_length=100)
    decisions = [s.acquire(F1, quota, f"r{n}") for n in range(51)]
    assert decisions == [Start()] + [Wait()] * 50
    # Another function is decided on its own, at once.
    assert s.acquire(F2, quota, "other") == Start()
    # The start fails: every rider is given back, none stays queued for a slot that is not coming.
    assert sorted(s.start_failed(F1)) == sorted(f"r{n}" for n in range(1, 51))
    assert s.queued(F1) == 0
    assert s.memory_used_mb == 128  # F2's start only
    # Given back, they ask again without riding: each starts its own (all at once, each to fail
    # on its own), rather than riding on one start after another until max_wait runs out.
    assert [s.acquire(F1, quota, f"r{n}", ride=False) for n in range(1, 51)] == [Start()] * 50
    assert s.queued(F1) == 0
    for _ in range(50):
        assert s.start_failed(F1) == []
    assert s.queued(F1) == 0 and s.instances(F1) == 0 and s.memory_used_mb == 128


def test_riders_given_back_queue_as_usual_when_the_function_is_at_its_maximum() -> None:
    s = Scheduler(lambda: 0.0, 10**6)
    quota = Quota(max_instances=2, slots=100, memory_mb=128, queue_length=100)
    assert [s.acquire(F1, quota, f"r{n}") for n in range(10)] == [Start()] + [Wait()] * 9
    given_back = s.start_failed(F1)
    assert len(given_back) == 9
    decided = [s.acquire(F1, quota, r, ride=False) for r in given_back]
    assert decided == [Start(), Start()] + [Wait()] * 7
    # Those two fail too: the seven waiting for them are given back again, none left behind.
    assert s.start_failed(F1) == []
    assert len(s.start_failed(F1)) == 7 and s.queued(F1) == 0


@pytest.fixture(scope="module")
def short_wait(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running(
        tmp_path_factory.mktemp("riders") / "state", "[scheduler]\nqueue_length = 60\nmax_wait = 4.0\n"
    ) as daemon:
        yield Api(daemon)


FAILING = {
    "raises": "def init(context):\n    raise RuntimeError('no database')\n",
    "exits": "import os\ndef init(context):\n    os._exit(3)\n",
}


def burst(api: Api, name: str, count: int) -> tuple[list[httpx.Response], float]:
    started = time.monotonic()

    def call(_: int) -> httpx.Response:
        with api.daemon.client() as client:
            return client.post(f"/functions/{name}/invocations", json={})

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        responses = list(pool.map(call, range(count)))
    return responses, time.monotonic() - started


@pytest.mark.parametrize("how", sorted(FAILING))
def test_a_burst_on_a_function_that_cannot_start_is_answered_with_its_failure_not_held(
    short_wait: Api, how: str
) -> None:
    api = short_wait
    healthy = api.deploy("def handler(e, c):\n    return 'served'\n")["func_name"]
    source = FAILING[how] + "def handler(event, context):\n    return 'never'\n"
    # Many slots an instance: the burst rides on the few starts it makes.
    name = api.deploy(source, initializer_handler="index.init", strategy_config={"concurrent_num": 100})["func_name"]
    other: list[httpx.Response] = []
    with concurrent.futures.ThreadPoolExecutor(1) as side:
        future = side.submit(burst, api, name, 50)
        # Another function is served while the burst fails.
        while not future.done():
            other.append(api.invoke(healthy))
            time.sleep(0.05)
        responses, elapsed = future.result()
    assert other and all(r.status_code == 200 and r.text == "served" for r in other)
    # Every request is answered with the start's failure, well before max_wait: no 429 saying
    # the function was busy, no request left waiting for a slot that was never coming.
    kinds = sorted({(r.status_code, r.text[:120]) for r in responses})
    assert all(r.headers.get("x-is-func-err") == "true" for r in responses), kinds
    assert {r.json()["errorType"] for r in responses} <= {"Runtime.InitError", "Runtime.ExitError"}, kinds
    assert elapsed < 4.0, elapsed
    assert httpx.get(f"{api.daemon.url}/healthz").status_code == 200


def test_riders_of_hanging_initializers_are_not_told_the_function_was_busy(short_wait: Api) -> None:
    """An initializer that hangs until its timeout: each failed start gives its riders back, who
    ride on the next start; none may end as a 429 'stayed busy' when the truth is a failed start."""
    api = short_wait
    source = "import time\ndef init(context):\n    time.sleep(30)\ndef handler(event, context):\n    return 'never'\n"
    name = api.deploy(
        source, initializer_handler="index.init", initializer_timeout=1, strategy_config={"concurrent_num": 100}
    )["func_name"]
    responses, elapsed = burst(api, name, 8)
    told = sorted(
        {(r.status_code, (r.json().get("errorType") or r.json().get("error_msg", ""))[:80]) for r in responses}
    )
    assert all(r.headers.get("x-is-func-err") == "true" for r in responses), (told, elapsed)
    assert all(r.json()["errorType"] == "Runtime.InitError" for r in responses), told
    # Two initializer timeouts (the start they rode on, then their own), not one per rider.
    assert elapsed < 4.0, elapsed
