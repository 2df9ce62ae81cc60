"""How many events a worker keeps in flight, against InLoox servers of different shapes (workers/consumer/in_flight.py).

Each case plays a server: given the events in flight, how long its answers take. A window's answers
are those Little's law gives (in flight × window / answer time), as a worker with a full backlog sees them.
"""
from __future__ import annotations

from workers.consumer.in_flight import BUSY_FLOOR, FLOOR, SLOW_MEMORY, TOGETHER, TOGETHER_LONG, InFlightLimit


class _Server:
    def __init__(self, answer_time, *, own_work: float = 0.0):
        self.answer_time = answer_time  # in flight -> seconds per answer
        self.own_work = own_work  # seconds each event spends on the worker's own CPU, not waiting on InLoox
        self.now = 0.0
        self.cpu_used = 0.0  # the worker's CPU seconds: its own work for each answer it got
        self._answers: list[float] = []
        self.in_flight, self.over = 0, None  # for `play(finishing=...)`
        self._owed = 0.0

    def cpu(self) -> float:
        return self.cpu_used

    def clock(self) -> float:
        return self.now

    def take(self) -> list[float]:
        taken, self._answers = self._answers, []
        return taken

    def play(self, limit: InFlightLimit, seconds: float, *, backlog: bool = True,
             arriving: int | None = None, finishing: float = 0.0) -> list[int]:
        """Keep the limit's worth of events in flight (or none without a backlog, or `arriving` when events
        come slower than the limit takes them); the limits seen, per step. `finishing`: the seconds threads
        over a lowered limit take to finish what they hold (8 events each take a while), else at once."""
        seen, step = [], 0.1
        while seconds > 0:
            wanted = (limit.value if arriving is None else min(arriving, limit.value)) if backlog else 0
            if finishing and wanted < self.in_flight:
                if self.over is None:  # the limit was lowered: the threads over it finish over `finishing`
                    self.over = self.in_flight - wanted
                in_flight = max(wanted, self.in_flight - round(self.over * step / finishing))
            else:
                in_flight, self.over = wanted, None
            self.in_flight = in_flight
            longest = 0.0
            if in_flight:
                answer = self.answer_time(in_flight)
                per_event = answer + self.own_work
                # Answers owed carry over from step to step: one thread waiting 0.2 s answers every other step.
                self._owed += in_flight * step / per_event
                answered = int(self._owed + 0.5)
                self._owed -= answered
                self._answers += [answer] * answered
                self.cpu_used += answered * self.own_work
                longest = answer  # the oldest answer awaited has waited this long at most
            seen.append(limit.observe(in_flight, longest=longest))
            self.now += step
            seconds -= step
        return seen


def _limit(server: _Server, ceiling: int = 400) -> InFlightLimit:
    return InFlightLimit(ceiling, take=server.take, clock=server.clock, cpu=server.cpu)


def test_an_inloox_answering_in_a_second_gets_as_many_events_in_flight_as_the_ceiling_allows():
    server = _Server(lambda in_flight: 1.0)
    limit = _limit(server)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)  # what a quick InLoox is best served by
    server.play(limit, 15)
    # 48 threads (the old fixed pool) would have written 48 a second; 400 in flight write 400.
    assert limit.value == 400
    assert limit.batch() == 1  # a thread waits for one answer at a time


def test_a_server_that_queues_what_it_is_sent_is_not_sent_more():
    # 200 answers a second at most, 50 ms each when not queueing: 10 in flight is all it can use.
    server = _Server(lambda in_flight: max(0.05, in_flight / 200))
    limit = _limit(server)
    seen = server.play(limit, 60)
    assert max(seen) <= 2 * FLOOR  # a doubling was tried, found to buy queueing, and taken back
    assert limit.value == FLOOR


def test_a_worker_busy_with_its_own_work_keeps_a_few_threads_each_taking_several_events():
    # InLoox answers in a millisecond; each event costs the worker 4 ms of its own.
    server = _Server(lambda in_flight: 0.001, own_work=0.004)
    limit = _limit(server)
    assert limit.batch() == TOGETHER  # from the start
    assert max(server.play(limit, 30)) == BUSY_FLOOR
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)


def test_between_bursts_a_worker_keeps_what_it_learned_of_a_slow_inloox_and_else_its_busy_floor():
    answer = {"time": 0.2}
    server = _Server(lambda in_flight: answer["time"], own_work=0.004)
    limit = _limit(server)
    server.play(limit, 10)  # an InLoox answering in 200 ms: one event per thread, as many threads as help
    learned = limit.value
    assert learned >= FLOOR and limit.batch() == 1
    server.play(limit, 5, backlog=False)  # gone: the next burst starts from what was learned
    assert (limit.value, limit.batch()) == (learned, 1)
    quick = _Server(lambda in_flight: 0.001, own_work=0.004)
    limit = _limit(quick)
    quick.play(limit, 10, arriving=2)  # a quick InLoox, events trickling in: the busy floor throughout
    quick.play(limit, 5, backlog=False)
    assert set(quick.play(limit, 10)) == {BUSY_FLOOR} and limit.batch() == TOGETHER


def test_a_busy_worker_whose_inloox_slows_down_waits_for_one_answer_per_thread_again():
    answer = {"time": 0.001}
    server = _Server(lambda in_flight: answer["time"], own_work=0.004)
    limit = _limit(server)
    server.play(limit, 30)
    assert limit.value == BUSY_FLOOR
    answer["time"] = 0.2  # now the events wait for InLoox
    server.play(limit, 5)
    assert limit.value >= FLOOR and limit.batch() == 1


def test_an_inloox_that_stops_answering_cuts_the_limit():
    answer = {"time": 1.0}
    server = _Server(lambda in_flight: answer["time"])
    limit = _limit(server)
    server.play(limit, 15)
    assert limit.value == 400
    answer["time"] = 30.0  # every request now runs into the read timeout
    server.play(limit, 10)
    assert limit.value < 400 * 0.75


def test_nothing_in_flight_teaches_nothing():
    server = _Server(lambda in_flight: 1.0)
    limit = _limit(server)
    server.play(limit, 15)
    server.play(limit, 30, backlog=False)
    assert limit.value == 400  # a quiet spell does not undo what the last busy one learned


def test_the_ceiling_holds_even_when_it_is_below_the_floor():
    server = _Server(lambda in_flight: 1.0)
    limit = _limit(server, ceiling=4)
    assert max(server.play(limit, 10)) == 4


def test_answers_not_back_yet_are_not_taken_for_a_busy_cpu():
    # The first second of a slow InLoox: 48 creates sent, only a few quick reads answered so far.
    answers = iter([[0.002] * 5] * 2 + [[1.0] * 48] * 200)
    clock = {"now": 0.0}
    limit = InFlightLimit(400, take=lambda: next(answers), clock=lambda: clock["now"])
    seen = []
    for _ in range(100):
        clock["now"] += 0.1
        seen.append((limit.observe(limit.value), limit.batch()))
    at_floor = next(n for n, (value, _) in enumerate(seen) if value >= FLOOR)  # the answers of a second came
    assert min(seen[at_floor:]) == (FLOOR, 1)  # then never fewer threads, nor several events each


def test_a_thread_held_up_by_a_slow_answer_sends_a_busy_worker_back_to_one_event_per_thread():
    # A busy worker down to a few threads, each taking several events; then one event waits on a receiver
    # that hangs. Until that answer comes no window sees it, and the other events would wait behind it.
    server = _Server(lambda in_flight: 0.001, own_work=0.004)
    limit = _limit(server)
    server.play(limit, 30)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)
    limit.observe(BUSY_FLOOR, longest=3.0)
    assert (limit.value, limit.batch()) == (FLOOR, 1)


def test_a_slow_answer_at_the_busy_floor_sends_the_worker_to_a_thread_per_event_and_keeps_it_there_a_while():
    # At the busy floor one thread runs every workspace's events, a batch at a time. One workspace's answer
    # that takes a fraction of a second (its InLoox, its receiver) would hold up the others' events queued
    # behind its batch; LONG_SECONDS (1 s) was the only way out. And while such answers come now and then,
    # the worker keeps a thread per event between bursts, as it did before it started at the busy floor.
    server = _Server(lambda in_flight: 0.001, own_work=0.004)
    limit = _limit(server)
    server.play(limit, 5, arriving=1)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)
    limit.observe(1, longest=TOGETHER_LONG + 0.05)
    assert (limit.value, limit.batch()) == (FLOOR, 1)
    server.play(limit, 5, backlog=False)
    assert limit.value == FLOOR, "a slow answer lately: not back to the busy floor"
    server.play(limit, SLOW_MEMORY + 5, arriving=1)  # quick answers for a while
    server.play(limit, 5, backlog=False)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)


def test_a_worker_whose_threads_wait_for_its_own_gil_is_not_fooled_into_more_threads():
    # A quick InLoox (1 ms), and 3 ms of the worker's own CPU per event on one GIL: a thread whose answer
    # came waits for the others' CPU before it sees it, so the answer times it measures grow with the
    # threads, and the events look like they wait for InLoox. The process uses a whole core meanwhile.
    server = _Server(lambda in_flight: 0.001 + in_flight * 0.003, own_work=0.003)
    limit = _limit(server)
    seen = server.play(limit, 30)
    assert max(seen) <= FLOOR  # before: doubled to the ceiling, the answers slowing with every doubling
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)


def test_a_worker_busy_with_many_slow_answers_keeps_them_in_flight():
    # InLoox answers in a second; 400 events in flight cost the worker a core of its own CPU. A probe with
    # a few threads for the busy CPU does not make the answers quicker: after its window it is taken back,
    # held for minutes, and what is in flight stays.
    server = _Server(lambda in_flight: 1.0, own_work=0.003)
    limit = _limit(server)
    server.play(limit, 20)
    grown = limit.value
    assert grown >= 300
    seen = server.play(limit, 120)
    assert sum(1 for n in seen if n < 0.75 * grown) <= 15  # one probe's window (1.5 s at most)
    assert sum(seen) / len(seen) > 0.95 * grown
    assert limit.batch() == 1


def test_a_worker_whose_answers_shrink_less_than_its_threads_still_finds_the_few_threads_that_suit_it():
    # Measured (bench/RESULTS.md section 20): against a quick InLoox, cutting 48 threads by a quarter made the
    # answers only 10-15 % quicker, within the noise, while 4 threads made them 10 times quicker. Judged a
    # quarter at a time, every cut was taken back and held; one probe straight down to a few threads shows it.
    server = _Server(lambda in_flight: 0.003 + 0.01 * in_flight ** 0.5, own_work=0.003)
    limit = _limit(server)
    server.play(limit, 30)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)


def test_answers_that_stay_quick_keep_a_busy_worker_on_its_few_threads():
    # Answers from 1 ms to 6 ms (a pause of Valkey's, a neighbour's burst): six times slower than usual, and
    # still quick enough for eight events one after the other. Before, each such hiccup sent the worker back
    # to 48 threads of one event, whose CPU it had just been shown to lack.
    answer = [0.001]
    server = _Server(lambda in_flight: answer[0], own_work=0.004)
    limit = _limit(server)
    server.play(limit, 30)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)
    answer[0] = 0.006
    seen = server.play(limit, 5)
    assert set(seen) == {BUSY_FLOOR} and limit.batch() == TOGETHER


def test_a_probe_that_failed_while_the_machine_was_crowded_is_tried_again_once_it_is_not():
    # The web acknowledges a burst on the same cores for 10 s: every answer takes 20 ms whatever the worker
    # keeps in flight, so a probe with few threads buys nothing. Then the worker drains alone, and its own
    # GIL is what slows its answers: a few threads with several events each are what it needs. Before,
    # the failed probe was held for 300 windows: the whole drain on 48 threads with one event each.
    def answer_time(in_flight: int) -> float:
        return 0.020 if server.now < 10.0 else 0.001 + in_flight * 0.003

    server = _Server(answer_time, own_work=0.003)
    limit = _limit(server)
    server.play(limit, 10)
    server.play(limit, 20)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)


def test_a_probe_is_judged_by_the_answers_of_its_own_few_threads_not_of_those_still_finishing():
    # The stack's logs (LOG_LEVEL=DEBUG, 2026-12-06): the web's burst over, the worker on 40 threads with 8
    # events each when it probed 2 threads. Those 40 took most of the probe's window to finish their
    # events, so the window's answers were theirs (36 ms against 27 before the cut), the probe was taken
    # back, and the drain went on at 30-40 threads, as in most runs of that day. Here too: many threads
    # make the answers slow (the GIL), a few make them quick; the threads over a cut take 0.8 s to finish.
    server = _Server(lambda in_flight: 0.036 if in_flight > 4 else 0.002, own_work=0.003)
    limit = _limit(server)
    limit.value = 40  # below the floor, so 8 events a thread: where the web's burst left it (bench/RESULTS.md 25)
    seen = server.play(limit, 10, finishing=0.8)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)
    assert seen[-50:] == [BUSY_FLOOR] * 50  # before: back to 40 after each probe, and probing again


def test_a_worker_at_its_busy_floor_is_not_probed_again():
    """At the busy floor there is nothing fewer to try. Before, each window with a busy CPU started a probe
    from the floor to the floor, and for that window its thread took one event at a time (a stack's debug
    log: "a probe of 1 kept" every second of the drain)."""
    # Many threads wait for the GIL (answers seen in 9 ms); one thread uses 0.78 of a core on its own work
    # (busy) and waits 0.22 of the time for answers (not idle).
    server = _Server(lambda in_flight: 0.0022 if in_flight <= BUSY_FLOOR else 0.009, own_work=0.0078)
    limit = _limit(server)
    server.play(limit, 30)
    assert (limit.value, limit.batch()) == (BUSY_FLOOR, TOGETHER)
    batches = set()
    for _ in range(100):
        server.play(limit, 0.1)
        batches.add(limit.batch())
    assert batches == {TOGETHER}


def test_a_worker_busy_with_answers_slower_than_its_busy_floor_suits_is_probed_once_not_again_and_again():
    # InLoox answers in 100 ms; the events are on the lane (one thread's loop, workers/consumer/), whose
    # answers include its loop's lag as the worker nears a core. A probe with one event makes them quicker
    # (no lag), but not quick enough for the busy floor, which goes back to FLOOR within a window. Before,
    # such a probe was kept, and the worker spent every other window on one event at a time (the stack's
    # debug log, bench/RESULTS.md section 30); now it is taken back and held.
    server = _Server(lambda in_flight: 0.100 + 0.0003 * in_flight, own_work=0.0015)
    limit = _limit(server)
    seen = server.play(limit, 60)
    assert sum(1 for n in seen if n < FLOOR) <= 15  # one probe's window (1.5 s at most); before: 299 of 600
    assert limit.value >= FLOOR and limit.batch() == 1
