"""survlm.phases: a stage's wall time by named phase."""
import time

import psutil

from survlm import phases as phases_module
from survlm.phases import Phases, process_age_s


def test_process_age_is_the_time_since_this_process_started():
    expected = time.time() - psutil.Process().create_time()
    assert abs(process_age_s() - expected) < 1.0


def test_phases_add_up_and_the_untimed_rest_is_other(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 5.0, 6.0, 10.0, 12.0])
    monkeypatch.setattr(phases_module.time, "perf_counter", lambda: next(clock))
    p = Phases(startup=False)                 # 0
    with p.time("a"):                         # 1 .. 3
        pass
    with p.time("a"):                         # 4 .. 5: the same phase again adds up
        pass
    with p.time("b"):                         # 6 .. 10
        pass
    assert p.as_dict() == {"a": 3.0, "b": 4.0, "other": 5.0}   # at 12: 12 - 7 timed


def test_a_stage_clock_starts_with_the_process_startup():
    assert Phases().seconds["startup"] > 0
