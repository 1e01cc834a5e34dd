"""The step scheduler driven with hand-built model outputs (no model, no ORT)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from batcher.steps import (
    Admission,
    FinishReason,
    SeqOutput,
    SeqRequest,
    SeqStatus,
    SlotAllocator,
    StepConfig,
    StepPlan,
    StepScheduler,
)


def run_step(
    sched: StepScheduler, eos: frozenset[str] = frozenset()
) -> tuple[StepPlan, list]:
    plan = sched.schedule()
    outputs = {
        s.request_id: SeqOutput(token=(s.request_id, s.num_generated), eos=s.request_id in eos)
        for s in plan.scheduled
    }
    return plan, sched.update(plan, outputs)


def ids(seqs) -> list[str]:
    return [s.request_id for s in seqs]


def test_join_mid_flight_and_leave_immediately() -> None:
    sched = StepScheduler(StepConfig(max_active=4))
    sched.add(SeqRequest("a", prompt_tokens=5, max_new_tokens=10))
    plan, events = run_step(sched)
    assert ids(plan.prefill) == ["a"] and not plan.decode
    assert events[0].token == ("a", 0) and events[0].num_generated == 1

    sched.add(SeqRequest("b", prompt_tokens=3, max_new_tokens=10))
    plan, events = run_step(sched)
    assert ids(plan.prefill) == ["b"] and ids(plan.decode) == ["a"]

    plan, events = run_step(sched, eos=frozenset({"a"}))
    assert ids(plan.decode) == ["a", "b"]
    finished = {e.request_id: e.finish for e in events}
    assert finished == {"a": FinishReason.EOS, "b": None}
    assert sched.status("a") is None  # gone right away
    plan, _ = run_step(sched)
    assert ids(plan.decode) == ["b"] and not plan.prefill


def test_max_tokens_finishes_with_reason() -> None:
    sched = StepScheduler(StepConfig(max_active=2))
    sched.add(SeqRequest("a", prompt_tokens=2, max_new_tokens=3))
    reasons = [run_step(sched)[1][0].finish for _ in range(3)]
    assert reasons == [None, None, FinishReason.MAX_TOKENS]
    assert not sched.has_requests()
    assert sched.schedule().empty


def test_eos_wins_over_max_tokens() -> None:
    sched = StepScheduler(StepConfig())
    sched.add(SeqRequest("a", prompt_tokens=2, max_new_tokens=1))
    _, events = run_step(sched, eos=frozenset({"a"}))
    assert events[0].finish == FinishReason.EOS


def test_max_active_respected_and_fifo_admission() -> None:
    sched = StepScheduler(StepConfig(max_active=2, max_prefills_per_step=8))
    for name in "abcde":
        sched.add(SeqRequest(name, prompt_tokens=4, max_new_tokens=100))
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["a", "b"] and sched.num_waiting == 3
    for _ in range(3):
        plan, _ = run_step(sched)
        assert len(plan.scheduled) == 2 and not plan.prefill
    plan, _ = run_step(sched, eos=frozenset({"b"}))
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["c"]  # next in arrival order, in the very next step
    assert ids(plan.decode) == ["a"]


def test_abort_waiting_and_running() -> None:
    sched = StepScheduler(StepConfig(max_active=1))
    sched.add(SeqRequest("a", prompt_tokens=4, max_new_tokens=100))
    sched.add(SeqRequest("b", prompt_tokens=4, max_new_tokens=100))
    sched.add(SeqRequest("c", prompt_tokens=4, max_new_tokens=100))
    run_step(sched)
    assert sched.abort("b") and sched.num_waiting == 1  # waiting: gone at once
    assert sched.abort("a")
    assert not sched.abort("a") and not sched.abort("zzz")
    plan = sched.schedule()
    assert plan.evicted_ids == ("a",)  # the running one is dropped at the next step...
    assert ids(plan.prefill) == ["c"]  # ...and its slot is reused in that same step
    assert not plan.decode
    events = sched.update(plan, {"c": SeqOutput(token=0)})
    assert [(e.request_id, e.finish, e.num_generated) for e in events] == [
        ("a", FinishReason.ABORTED, 1), ("c", None, 1)]


def test_abort_during_step_skips_its_output() -> None:
    sched = StepScheduler(StepConfig(max_active=2))
    sched.add(SeqRequest("a", prompt_tokens=4, max_new_tokens=100))
    plan = sched.schedule()
    sched.abort("a")
    assert sched.update(plan, {"a": SeqOutput(token=1)}) == []
    assert sched.schedule().evicted_ids == ("a",)
    assert not sched.has_requests()


def test_no_room_blocks_head_without_overtaking() -> None:
    allocator = SlotAllocator(max_slots=4, max_tokens=100)
    sched = StepScheduler(StepConfig(max_active=4), allocator)
    sched.add(SeqRequest("big1", prompt_tokens=10, max_new_tokens=50))
    sched.add(SeqRequest("big2", prompt_tokens=10, max_new_tokens=50))  # 60 + 60 > 100
    sched.add(SeqRequest("small", prompt_tokens=1, max_new_tokens=1))
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["big1"]
    plan, _ = run_step(sched)
    assert not plan.prefill  # small fits, but must not overtake big2
    assert sched.status("small") == SeqStatus.WAITING
    plan, _ = run_step(sched, eos=frozenset({"big1"}))
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["big2", "small"]
    assert allocator.reserved_tokens == 60  # small (1 new token) finished in its prefill


def test_prefill_budget_per_step() -> None:
    sched = StepScheduler(StepConfig(max_active=8, max_prefills_per_step=2,
                                     max_prefill_tokens=10))
    sched.add(SeqRequest("long", prompt_tokens=30, max_new_tokens=5))
    for name in "abc":
        sched.add(SeqRequest(name, prompt_tokens=4, max_new_tokens=5))
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["long"]  # over the token budget, but first of its step
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["a", "b"]  # two per step
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["c"]


def test_static_admission_waits_for_the_batch_to_finish() -> None:
    sched = StepScheduler(StepConfig(max_active=2, admission=Admission.STATIC))
    for name in "abc":
        sched.add(SeqRequest(name, prompt_tokens=4, max_new_tokens=100))
    plan, _ = run_step(sched, eos=frozenset())
    assert ids(plan.prefill) == ["a", "b"]
    plan, _ = run_step(sched, eos=frozenset({"a"}))
    plan, _ = run_step(sched)
    assert not plan.prefill and ids(plan.decode) == ["b"]  # a free row, but no joining
    run_step(sched, eos=frozenset({"b"}))
    plan, _ = run_step(sched)
    assert ids(plan.prefill) == ["c"]


def test_rejects_what_can_never_run() -> None:
    sched = StepScheduler(StepConfig(max_seq_len=16))
    with pytest.raises(ValueError, match="exceed"):
        sched.add(SeqRequest("a", prompt_tokens=10, max_new_tokens=7))
    with pytest.raises(ValueError):
        sched.add(SeqRequest("b", prompt_tokens=0, max_new_tokens=7))
    sched.add(SeqRequest("c", prompt_tokens=1, max_new_tokens=1))
    with pytest.raises(ValueError, match="already"):
        sched.add(SeqRequest("c", prompt_tokens=1, max_new_tokens=1))


def test_missing_output_is_an_error() -> None:
    sched = StepScheduler(StepConfig())
    sched.add(SeqRequest("a", prompt_tokens=1, max_new_tokens=3))
    plan = sched.schedule()
    with pytest.raises(ValueError, match="no output"):
        sched.update(plan, {})


def test_slots_are_reused_lowest_first() -> None:
    sched = StepScheduler(StepConfig(max_active=3, max_prefills_per_step=3))
    for name in "abc":
        sched.add(SeqRequest(name, prompt_tokens=1, max_new_tokens=9))
    plan, _ = run_step(sched, eos=frozenset({"a"}))
    assert [s.slot for s in plan.prefill] == [0, 1, 2]
    sched.add(SeqRequest("d", prompt_tokens=1, max_new_tokens=9))
    plan, _ = run_step(sched)
    assert [(s.request_id, s.slot) for s in plan.prefill] == [("d", 0)]


def test_batcher_imports_nothing_of_service_or_ort() -> None:
    source = (Path(__file__).resolve().parents[1] / "batcher" / "steps.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "enum", "typing"}


# -- flow control: pause / resume ------------------------------------------------------


def test_pause_frees_the_slot_and_resume_goes_first() -> None:
    sched = StepScheduler(StepConfig(max_active=1))
    sched.add(SeqRequest("a", prompt_tokens=2, max_new_tokens=50))
    sched.add(SeqRequest("b", prompt_tokens=2, max_new_tokens=50))
    run_step(sched)
    assert sched.pause("a")
    assert sched.status("a") == SeqStatus.RUNNING  # leaves at the next schedule
    plan, events = run_step(sched)
    assert ids(plan.paused) == ["a"] and ids(plan.prefill) == ["b"] and not plan.decode
    assert sched.status("a") == SeqStatus.PAUSED and sched.num_paused == 1
    assert [e.request_id for e in events] == ["b"]  # a paused sequence makes no token
    sched.add(SeqRequest("c", prompt_tokens=2, max_new_tokens=5))
    assert sched.resume("a")
    plan, _ = run_step(sched, eos=frozenset({"b"}))  # b still holds the only slot
    assert not plan.resumed and ids(plan.decode) == ["b"]
    plan, events = run_step(sched)
    # a resumed sequence takes the slot before c (which waited longer in the queue, but
    # a started long before) and decodes at once, without a prefill
    assert ids(plan.resumed) == ["a"] and ids(plan.decode) == ["a"] and not plan.prefill
    assert events[0].num_generated == 2  # its count went on where it stopped
    assert sched.status("c") == SeqStatus.WAITING


def test_pause_before_it_leaves_is_undone_by_resume() -> None:
    sched = StepScheduler(StepConfig(max_active=2))
    sched.add(SeqRequest("a", prompt_tokens=2, max_new_tokens=50))
    run_step(sched)
    assert sched.pause("a") and not sched.pause("a")  # asked once
    assert sched.resume("a")
    plan, _ = run_step(sched)
    assert not plan.paused and ids(plan.decode) == ["a"]
    assert not sched.resume("a")  # not paused: nothing to do


def test_pauses_are_capped_and_paused_ones_can_be_aborted() -> None:
    sched = StepScheduler(StepConfig(max_active=4, max_paused=2))
    for rid in "abc":
        sched.add(SeqRequest(rid, prompt_tokens=2, max_new_tokens=50))
    run_step(sched)
    assert sched.pause("a") and sched.pause("b")
    assert not sched.pause("c")  # room for two paused sequences only: c runs on
    run_step(sched)
    assert sched.num_paused == 2 and sched.status("c") == SeqStatus.RUNNING
    assert sched.num_running == 1
    assert sched.abort("a")  # paused: gone at once, nothing to evict
    assert sched.status("a") is None
    plan, _ = run_step(sched)
    assert not plan.evicted
    assert sched.resume("b") and sched.abort("b")  # resuming, still waiting: gone at once
    assert sched.status("b") is None
    assert not sched.pause("waiting-never-added")


def test_only_paused_sequences_left_means_no_work() -> None:
    sched = StepScheduler(StepConfig(max_active=2))
    sched.add(SeqRequest("a", prompt_tokens=2, max_new_tokens=50))
    run_step(sched)
    sched.pause("a")
    run_step(sched)
    assert sched.has_requests() and not sched.has_work()
