"""The sans-IO scheduler: targeted cases, then thousands of random sequences against its invariants."""

from __future__ import annotations

import itertools
import random

import pytest

from fgd.scheduler import Assign, Quota, Reject, Scheduler, Start, Wait

F1 = ("p", "default", "f1")
F2 = ("p", "default", "f2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def limits(max_instances: int = 2, slots: int = 1, memory: int = 128, queue: int = 2) -> Quota:
    return Quota(max_instances, slots, memory, queue)


def test_first_request_starts_then_reuses() -> None:
    s = Scheduler(Clock(), 1024)
    assert s.acquire(F1, limits(), "r1") == Start()
    assert s.started(F1, "i1") == []
    assert s.release("i1") == []
    assert s.acquire(F1, limits(), "r2") == Assign("i1")


def test_slots_are_shared_up_to_concurrent_num() -> None:
    s = Scheduler(Clock(), 1024)
    assert s.acquire(F1, limits(slots=4), "r0") == Start()
    s.started(F1, "i1")
    assert [s.acquire(F1, limits(slots=4), f"r{n}") for n in range(1, 4)] == [Assign("i1")] * 3
    assert s.busy_slots("i1") == 4
    assert s.acquire(F1, limits(slots=4), "r4") == Start()


def test_max_instances_then_queue_then_429() -> None:
    s = Scheduler(Clock(), 1024)
    lim = limits(max_instances=1, queue=1)
    assert s.acquire(F1, lim, "r1") == Start()
    assert s.acquire(F1, lim, "r2") == Wait()
    decision = s.acquire(F1, lim, "r3")
    assert isinstance(decision, Reject) and decision.kind == "throttled"
    assert "all 1 instances" in decision.reason and "queue of 1" in decision.reason
    # The starter's instance comes up busy; when it is released, the queued request gets it.
    assert s.started(F1, "i1") == []
    assert s.release("i1") == ["r2"]


def test_queued_requests_get_extra_slots_of_a_new_instance() -> None:
    s = Scheduler(Clock(), 1024)
    lim = limits(max_instances=1, slots=3, queue=5)
    assert s.acquire(F1, lim, "r1") == Start()
    assert s.acquire(F1, lim, "r2") == Wait()
    assert s.acquire(F1, lim, "r3") == Wait()
    assert s.started(F1, "i1") == ["r2", "r3"]
    assert s.busy_slots("i1") == 3


def test_disabled_function_is_rejected() -> None:
    decision = Scheduler(Clock(), 1024).acquire(F1, limits(max_instances=0), "r")
    assert isinstance(decision, Reject) and decision.kind == "disabled"


def test_memory_budget_evicts_least_recently_used_idle_instance() -> None:
    s = Scheduler(Clock(), 256)
    s.acquire(F1, limits(), "a")
    s.started(F1, "old")
    s.release("old")
    s.acquire(F2, limits(), "b")
    s.started(F2, "newer")
    s.release("newer")
    assert s.acquire(("p", "default", "f3"), limits(), "c") == Start(evict=("old",))
    assert s.memory_used_mb == 256


def test_memory_budget_full_of_busy_instances_is_503() -> None:
    s = Scheduler(Clock(), 128)
    s.acquire(F1, limits(), "a")
    s.started(F1, "busy")
    decision = s.acquire(F2, limits(), "b")
    assert isinstance(decision, Reject) and decision.kind == "capacity"
    assert "128 MB" in decision.reason


def test_reserved_instances_are_never_reaped_or_evicted() -> None:
    clock = Clock()
    s = Scheduler(clock, 128)
    s.acquire(F1, limits(), "a")
    s.started(F1, "kept", reserved=True, for_request=False)
    assert s.idle_since(clock.now + 100) == []
    decision = s.acquire(F2, limits(), "b")
    assert isinstance(decision, Reject)


def test_reaper_sees_only_idle_instances_past_keepalive() -> None:
    clock = Clock()
    s = Scheduler(clock, 1024)
    s.acquire(F1, limits(), "a")
    s.started(F1, "idle")
    s.release("idle")
    s.acquire(F1, limits(), "b")  # takes "idle" again
    assert s.idle_since(clock.now + 1) == []
    s.release("idle")
    assert s.idle_since(clock.now + 1) == ["idle"]


def test_cancelled_waiter_leaves_the_queue() -> None:
    s = Scheduler(Clock(), 1024)
    lim = limits(max_instances=1, queue=3)
    s.acquire(F1, lim, "r1")
    s.acquire(F1, lim, "r2")
    assert s.cancel(F1, "r2") is True
    assert s.cancel(F1, "r2") is False
    s.started(F1, "i1")
    assert s.release("i1") == []


def test_one_function_cannot_take_more_than_its_share_of_memory() -> None:
    s = Scheduler(Clock(), 1024, 0.5)
    lim = limits(max_instances=-1, memory=256, queue=1)
    assert s.acquire(F1, lim, "r1") == Start()
    s.started(F1, "i1")
    assert s.acquire(F1, lim, "r2") == Start()
    s.started(F1, "i2")
    # Two 256 MB instances are the function's 512 MB share: the third request waits, the fourth is refused.
    assert s.acquire(F1, lim, "r3") == Wait()
    refused = s.acquire(F1, lim, "r4")
    assert isinstance(refused, Reject) and refused.kind == "throttled" and "share" in refused.reason
    # Another function still gets the rest of the node.
    assert s.acquire(F2, lim, "r5") == Start()


def test_a_function_larger_than_its_share_still_gets_one_instance() -> None:
    s = Scheduler(Clock(), 1024, 0.1)
    lim = limits(max_instances=-1, memory=512, queue=1)
    assert s.acquire(F1, lim, "r1") == Start()
    s.started(F1, "i1")
    assert s.acquire(F1, lim, "r2") == Wait()


def test_a_burst_rides_on_the_instances_starting_for_it() -> None:
    """64 requests at once for 16 slots an instance start 4 instances, not 64: the others wait
    for the starting instances' spare slots (found with 64 connections on a Node.js function:
    64 cold starts at once, most of the burst refused or timed out)."""
    s = Scheduler(Clock(), 10**6)
    quota = limits(max_instances=64, slots=16, queue=100)
    decisions = [s.acquire(F1, quota, f"r{n}") for n in range(64)]
    starters = [n for n, d in enumerate(decisions) if d == Start()]
    assert len(starters) == 4
    assert decisions.count(Wait()) == 60
    handed = [s.started(F1, f"i{n}") for n in range(4)]
    assert [len(h) for h in handed] == [15, 15, 15, 15]
    assert sorted(r for h in handed for r in h) == sorted(f"r{n}" for n in range(64) if n not in starters)
    assert all(s.busy_slots(f"i{n}") == 16 for n in range(4))


def test_riders_of_a_failed_start_ask_again_and_may_start_instead() -> None:
    s = Scheduler(Clock(), 10**6)
    quota = limits(max_instances=64, slots=4, queue=100)
    assert [s.acquire(F1, quota, f"r{n}") for n in range(5)] == [Start(), Wait(), Wait(), Wait(), Start()]
    # r4 started a second instance; r1-r3 ride on the first. It fails: one start is left, for 3 riders.
    assert s.start_failed(F1) == []
    assert s.start_failed(F1) == ["r3", "r2", "r1"]
    assert s.acquire(F1, quota, "r1") == Start()  # asking again, it may start one itself
    # With a single slot an instance there is nothing to ride on: each request starts one.
    assert [s.acquire(F2, limits(max_instances=8, queue=100), f"q{n}") for n in range(3)] == [Start()] * 3


def test_no_queue_means_no_riding() -> None:
    s = Scheduler(Clock(), 10**6)
    quota = limits(max_instances=8, slots=4, queue=0)
    assert [s.acquire(F1, quota, f"r{n}") for n in range(3)] == [Start()] * 3


@pytest.mark.parametrize("seed", range(500))
def test_random_sequences_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    budget = rng.choice([256, 512, 2048])
    share = rng.choice([1.0, 0.5, 0.25])
    s = Scheduler(clock, budget, share)
    keys = [("p", "d", f"f{n}") for n in range(3)]
    lims = {k: Quota(rng.choice([-1, 1, 2, 4]), rng.choice([1, 2, 3]), rng.choice([64, 128, 256]), 3) for k in keys}
    running: dict[str, str] = {}  # request -> instance
    waiting: dict[str, tuple] = {}  # request -> key
    starting: list[tuple[tuple, str]] = []
    instances: dict[str, tuple] = {}
    ids = itertools.count()
    for _ in range(120):
        action = rng.random()
        if action < 0.45:
            key = rng.choice(keys)
            request = f"r{next(ids)}"
            decision = s.acquire(key, lims[key], request)
            if isinstance(decision, Assign):
                running[request] = decision.instance
            elif isinstance(decision, Start):
                for evicted in decision.evict:
                    instances.pop(evicted)
                starting.append((key, request))
            elif isinstance(decision, Wait):
                waiting[request] = key
        elif action < 0.65 and starting:
            key, request = starting.pop(rng.randrange(len(starting)))
            if rng.random() < 0.1:
                for retry in s.start_failed(key) + s.waiting_with_nothing_coming(key):
                    waiting.pop(retry)
                continue
            instance = f"i{next(ids)}"
            instances[instance] = key
            running[request] = instance
            for handed in s.started(key, instance):
                assert waiting.pop(handed) == key
                running[handed] = instance
        elif action < 0.9 and running:
            request = rng.choice(list(running))
            instance = running.pop(request)
            for handed in s.release(instance):
                assert waiting.pop(handed) == instances[instance]
                running[handed] = instance
        elif waiting:
            request = rng.choice(list(waiting))
            if s.cancel(waiting[request], request):
                waiting.pop(request)
        # Invariants, after every step.
        for instance, key in instances.items():
            busy = sum(1 for i in running.values() if i == instance)
            assert s.busy_slots(instance) == busy <= lims[key].slots
            if busy < lims[key].slots:
                assert not any(k == key for k in waiting.values()), "a request waits while a slot is free"
        for key in keys:
            total = s.instances(key) + sum(1 for k, _ in starting if k == key)
            if lims[key].max_instances > 0:
                assert total <= lims[key].max_instances
            assert total <= 1 or total * lims[key].memory_mb <= budget * share, "a function took over its share"
        assert s.memory_used_mb <= budget


def test_an_instance_larger_than_the_whole_budget_is_refused_as_oversized_not_busy() -> None:
    """Found by the OpenAPI fuzzer: memory_size over the node's budget was a 503 'try again shortly'."""
    s = Scheduler(Clock(), 1024, function_share=0.5)
    decision = s.acquire(F1, limits(memory=2048), "r1")
    assert isinstance(decision, Reject) and decision.kind == "oversized"
    assert "2048 MB" in decision.reason and "1024 MB" in decision.reason
    reserved = s.reserve(F1, limits(memory=2048))
    assert isinstance(reserved, Reject) and reserved.kind == "oversized"
    # Exactly the budget still fits (the first instance of a function may exceed its share).
    assert s.acquire(F2, limits(memory=1024), "r2") == Start()


def _linear_choice(s: Scheduler, key: tuple) -> object | None:
    """The rule the index replaces (issue 15): a scan for the best instance with a free slot."""
    function = s._functions.get(key)
    free = [item for item in (function.instances.items() if function else ()) if item[1].busy < item[1].capacity]
    if not free:
        return None
    return max(free, key=lambda item: (item[1].reserved, item[1].busy > 0, item[1].last_used))[0]


@pytest.mark.parametrize("seed", range(100))
def test_the_per_function_index_chooses_what_a_linear_scan_would(seed: int) -> None:
    rng = random.Random(seed)
    s = Scheduler(Clock(), 10**6)
    lim = Quota(-1, rng.choice([1, 2, 4]), 128, 0)
    running: list[tuple[str, str]] = []
    ids = itertools.count()
    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            expected = _linear_choice(s, F1)
            decision = s.acquire(F1, lim, f"r{next(ids)}")
            if expected is None:
                assert isinstance(decision, Start)
                instance = f"i{next(ids)}"
                s.started(F1, instance, reserved=rng.random() < 0.2)
            else:
                assert decision == Assign(expected)
                instance = expected
            running.append(("r", instance))
        elif action < 0.85 and running:
            _request, instance = running.pop(rng.randrange(len(running)))
            s.release(instance)
        elif action < 0.92 and running:
            # Retired or died: gone with its slots (and its running requests).
            _request, instance = rng.choice(running)
            s.gone(instance)
            running = [r for r in running if r[1] != instance]
        elif running:
            s.set_busy(rng.choice(running)[1])
        function = s._functions.get(F1)
        # Stale index entries never outnumber the instances by much, and memory is kept exactly.
        assert function is None or len(function.free) <= 2 * len(function.instances) + 16
        assert s.memory_used_mb == sum(i.memory_mb for i in (function.instances.values() if function else ()))


def test_among_500_idle_instances_the_most_recently_used_is_taken() -> None:
    s = Scheduler(Clock(), 10**6)
    lim = Quota(-1, 1, 128, 0)
    for n in range(500):
        s.acquire(F1, lim, f"s{n}")
        s.started(F1, f"i{n}")
    for n in range(500):
        s.release(f"i{n}")
    assert s.acquire(F1, lim, "a") == Assign("i499")
    assert s.acquire(F1, lim, "b") == Assign("i498")
    s.release("i499")
    assert s.acquire(F1, lim, "c") == Assign("i499")
    s.gone("i498")
    s.release("i499")
    s.set_busy("i497")
    # Retired (i497, all its slots taken) and gone (i498) instances are skipped.
    assert [s.acquire(F1, lim, r) for r in ("d", "e")] == [Assign("i499"), Assign("i496")]
    assert s.memory_used_mb == 499 * 128
