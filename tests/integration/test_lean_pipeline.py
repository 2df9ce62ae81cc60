"""Issue 22: the worker's round trips go through workers.round_trips.pipeline, which packs and reads a
pipeline with less of redis-py's Python. On a real Valkey, what it returns and raises must be what
redis-py's own pipeline returns and raises, command for command."""
from __future__ import annotations

import pytest
import redis

from workers.round_trips.pipeline import LeanPipeline, pipeline

SCRIPT = "redis.call('INCRBY', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"


def _queue(pipe, prefix: str, script) -> None:
    """The kinds of command the worker sends, and some it does not, with options their callbacks read."""
    pipe.set(f"{prefix}:run", b"\x00\xffzlib", ex=3600)
    pipe.set(f"{prefix}:run", b"again", nx=True)
    pipe.set(f"{prefix}:run", b"swapped", get=True)
    pipe.get(f"{prefix}:run")
    pipe.get(f"{prefix}:nothing")
    pipe.zadd(f"{prefix}:index", {"a": 1.5, "b": 2})
    pipe.zadd(f"{prefix}:index", {"a": 1}, incr=True)
    pipe.zrange(f"{prefix}:index", 0, -1, withscores=True)
    pipe.zrem(f"{prefix}:index", "b")
    pipe.hincrby(f"{prefix}:billing", "runs", 3)
    pipe.hgetall(f"{prefix}:billing")
    pipe.incr(f"{prefix}:run")  # an error reply: not an integer
    pipe.expire(f"{prefix}:billing", 60)
    pipe.exists(f"{prefix}:run", f"{prefix}:nothing")
    script(keys=[f"{prefix}:counter"], args=[7], client=pipe)
    pipe.xadd(f"{prefix}:stream", {"field": "value"}, id="1-1")
    pipe.delete(f"{prefix}:nothing", f"{prefix}:stream")
    pipe.ping()


def _comparable(replies: list) -> list:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in replies]


@pytest.fixture
def connection(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_the_lean_pipeline_returns_what_redis_pys_returns(connection):
    script = connection.register_script(SCRIPT)
    connection.flushdb()
    with connection.pipeline(transaction=False) as pipe:
        _queue(pipe, "theirs", script)
        theirs = pipe.execute(raise_on_error=False)
    with pipeline(connection) as pipe:
        assert isinstance(pipe, LeanPipeline)
        _queue(pipe, "ours", script)
        ours = pipe.execute(raise_on_error=False)

    assert _comparable(ours) == _comparable(theirs)
    assert ours[0] is True and ours[1] is None and ours[2] == b"\x00\xffzlib" and ours[4] is None
    assert ours[7] == [(b"b", 2.0), (b"a", 2.5)]  # the withscores option reached the callback
    assert isinstance(ours[11], redis.ResponseError)
    assert ours[14] == b"7" and ours[-1] is True


def test_an_error_reply_is_raised_as_redis_py_raises_it_and_the_connection_stays_in_step(connection):
    connection.flushdb()
    connection.set("text", "x")
    with pipeline(connection) as pipe:
        pipe.set("before", 1).incr("text").set("after", 2)
        with pytest.raises(redis.ResponseError, match=r"Command # 2 \(INCRBY text 1\) of pipeline caused error"):
            pipe.execute()
    assert connection.get("before") == b"1" and connection.get("after") == b"2"  # sent, as redis-py sends them
    with pipeline(connection) as pipe:  # the pooled connection's next replies are its own
        assert pipe.get("after").ping().execute() == [b"2", True]


def test_a_command_the_lean_way_is_not_sure_of_goes_redis_pys_way(connection):
    connection.flushdb()
    with pipeline(connection) as pipe:
        pipe.execute_command("SCRIPT EXISTS", "0" * 40)  # a name redis-py splits in two
        pipe.set("k", memoryview(b"view"))  # an argument redis-py copies to bytes
        pipe.get("k")
        assert pipe.execute() == [[False], True, b"view"]


def test_a_connection_the_server_closed_is_replaced_as_redis_py_replaces_it(connection):
    """The pooled connection is redis-py's: one Valkey closed is found at its next checkout and opened again."""
    connection.flushdb()
    with pipeline(connection) as pipe:
        pipe.set("first", 1).execute()
    killer = redis.Redis(connection_pool=redis.ConnectionPool(**connection.connection_pool.connection_kwargs))
    assert killer.client_kill_filter(_type="normal", skipme=True) >= 1  # the pooled connection among them
    killer.close()
    with pipeline(connection) as pipe:
        assert pipe.set("second", 2).get("first").execute() == [True, b"1"]
