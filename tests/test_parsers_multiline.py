"""Multiline grouping: every built-in mode on small realistic samples, custom regexes, the flush timeout, the
line/byte bounds, per-stream grouping, and what the tailer relies on (held_from, unparsed lines passing)."""

from __future__ import annotations

import pytest

from logagent.parsers.factory import make_joiner
from tests.parsers_support import run_chunks, settings


def crilines(text: str, stream: str = "stdout") -> bytes:
    """Each line of text as a CRI F line, timestamps one microsecond apart."""
    return "".join(f"2024-05-14T09:00:00.{i + 1:06d}Z {stream} F {line}\n"
                   for i, line in enumerate(text.split("\n"))).encode()


def groups(mode: str, data: bytes, fmt: str = "cri", **keys: object) -> list[list[str]]:
    joiner = make_joiner(settings(format=fmt, multiline=mode, **keys), "app.log")
    return [r["message"].split("\n") for r in run_chunks(joiner, data)]


NODE = """\
{"level":30,"msg":"listening on 8080"}
Error: connect ECONNREFUSED 127.0.0.1:5432
    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16) {
  errno: -111,
  code: 'ECONNREFUSED',
  syscall: 'connect',
  address: '127.0.0.1',
  port: 5432
}
GET /healthz 200 1.204 ms - 2
/app/dist/server.js:42
    throw new Error('boom');
    ^

Error: boom
    at Object.<anonymous> (/app/dist/server.js:42:11)
    at Module._compile (node:internal/modules/cjs/loader:1256:14)

Node.js v20.11.1"""


def test_node_error_objects_and_uncaught_exception() -> None:
    lines = NODE.split("\n")
    assert groups("node", crilines(NODE)) == [lines[0:1], lines[1:9], lines[9:10], lines[10:19]]


RUBY = """\
I, [2024-05-14T09:41:12.907551 #1]  INFO -- : Started GET "/orders" for 10.0.0.1
E, [2024-05-14T09:41:12.912000 #1] ERROR -- : undefined method `total' for nil (NoMethodError)
app/models/order.rb:12:in `total'
app/controllers/orders_controller.rb:5:in `index'
/usr/local/bundle/gems/actionpack-7.1.3/lib/action_controller/metal/basic_implicit_render.rb:6:in `send_action'
I, [2024-05-14T09:41:13.000000 #1]  INFO -- : Completed 500 Internal Server Error in 5ms
/app/lib/worker.rb:12:in 'Worker#perform': undefined method 'foo' for nil (NoMethodError)
\tfrom /app/lib/worker.rb:5:in 'block in Worker#run'
\tfrom /app/bin/worker:3:in '<main>'"""


def test_ruby_logger_backtrace_and_uncaught_exception() -> None:
    lines = RUBY.split("\n")
    assert groups("ruby", crilines(RUBY, "stderr")) == [lines[0:1], lines[1:5], lines[5:6], lines[6:9]]


JAVA = """\
09:31:15.550 [main] INFO  c.e.Orders - started
09:31:16.001 [pool-1] ERROR c.e.Orders - failed
java.lang.IllegalStateException: no stock
\tat c.e.Orders.take(Orders.java:10)
Caused by: java.io.IOException: closed
\t... 3 more
  .   ____          _
09:31:17.000 [main] INFO  c.e.Orders - stopping"""


def test_java_logback_time_only_timestamps() -> None:
    lines = JAVA.split("\n")
    assert groups("java", crilines(JAVA)) == [lines[0:1], lines[1:7], lines[7:8]]


def test_java_lines_before_any_group_are_records_of_their_own() -> None:
    text = "  .   ____  banner\n :: Spring Boot ::\n2024-05-14 09:00:00.001  INFO started"
    assert groups("java", crilines(text)) == [[line] for line in text.split("\n")]


GO = """\
I0514 09:50:00.000123       1 main.go:41] starting
fatal error: all goroutines are asleep - deadlock!

goroutine 1 [chan receive]:
main.main()
\t/app/main.go:9 +0x2d
exit status 2
E0514 09:50:01.000000       1 main.go:50] restarted"""


def test_go_fatal_error_dump_ends_at_next_log_entry() -> None:
    lines = GO.split("\n")
    assert groups("go", crilines(GO, "stderr")) == [lines[0:1], lines[1:7], lines[7:8]]


PYTHON = """\
ERROR:root:job failed
Traceback (most recent call last):
  File "/app/job.py", line 3, in <module>
    run()
ValueError: bad input
WARNING:root:retrying
2024-05-14 09:00:00,001 INFO plain line

not a continuation
[2024-05-14 09:00:01 +0000] [1] [INFO] Booting worker"""


def test_python_blank_lines_join_only_when_the_trace_goes_on() -> None:
    lines = PYTHON.split("\n")
    assert groups("python", crilines(PYTHON, "stderr")) == [
        lines[0:5], lines[5:6], lines[6:7], [""], lines[8:9], lines[9:10]]


def test_raw_format_multiline_for_volume_files() -> None:
    text = ("2024-05-14 10:00:00,001 ERROR boom\njava.lang.RuntimeException: x\n\tat A.b(A.java:1)\n"
            "2024-05-14 10:00:01,000 INFO ok")
    joiner = make_joiner(settings(format="raw", multiline="java"), "app.log")
    recs = run_chunks(joiner, (text + "\n").encode())
    assert [(r["message"], r["lines"], r["fragments"], r["offset"]) for r in recs] == [
        ("\n".join(text.split("\n")[:3]), 3, 3, 0),
        (text.split("\n")[3], 1, 1, len("\n".join(text.split("\n")[:3])) + 1)]


@pytest.mark.parametrize("keys,want", [
    ({"multiline_start": r"^\d{4}-"}, [["2024-01-01 a", "  x", "y"], ["2024-01-01 b"]]),
    ({"multiline_continue": r"^\s"}, [["2024-01-01 a", "  x"], ["y"], ["2024-01-01 b"]]),
    ({"multiline_start": r"^\d{4}-", "multiline_continue": r"^\s"}, [["2024-01-01 a", "  x"], ["y"], ["2024-01-01 b"]]),
])
def test_custom_start_and_continue_regexes(keys: dict, want: list) -> None:
    assert groups("custom", crilines("2024-01-01 a\n  x\ny\n2024-01-01 b"), **keys) == want


def test_groups_are_per_stream_and_unparsed_lines_pass_alone() -> None:
    data = (b"2024-05-14T09:00:00.1Z stderr F 2024-05-14 09:00:00 ERROR x\n"
            b"2024-05-14T09:00:00.2Z stdout F 2024-05-14 09:00:00 INFO y\n"
            b"garbage line\n"
            b"2024-05-14T09:00:00.3Z stderr F \tat A.b(A.java:1)\n")
    joiner = make_joiner(settings(format="cri", multiline="java"), "x.log")
    recs = run_chunks(joiner, data)
    assert [(r.get("stream"), r["message"], r.get("flags")) for r in recs] == [
        (None, "garbage line", ["unparsed"]),
        ("stderr", "2024-05-14 09:00:00 ERROR x\n\tat A.b(A.java:1)", None),
        ("stdout", "2024-05-14 09:00:00 INFO y", None)]


def test_flush_timeout_emits_a_quiet_containers_last_trace() -> None:
    now = [1000.0]
    joiner = make_joiner(settings(format="cri", multiline="java", multiline_flush="2s"), "x.log",
                         clock=lambda: now[0])
    data = crilines("2024-05-14 09:00:00 ERROR failed\njava.lang.Exception: x\n\tat A.b(A.java:1)")
    lines = data.decode().splitlines()
    offsets = [0, len(lines[0]) + 1, len(lines[0]) + len(lines[1]) + 2]
    assert joiner.feed(lines[:2], offsets[:2]) == []
    assert joiner.held_from() == 0
    now[0] = 1001.5
    assert joiner.feed(lines[2:], offsets[2:]) == []
    assert joiner.flush(1003.0) == []  # 1.5 s since the last line: still growing
    out = joiner.flush(1003.5)
    assert [(r["lines"], r["offset"]) for r in out] == [(3, 0)]
    assert joiner.held_from() is None and joiner.flush(2000.0, force=True) == []


def test_bounds_split_a_group_into_truncated_and_continued_records() -> None:
    text = "2024-05-14 09:00:00 ERROR x\n" + "\n".join(f"\tat A.m{i}(A.java:{i})" for i in range(6))
    by_lines = make_joiner(settings(format="cri", multiline="java", multiline_max_lines=3), "x.log")
    recs = run_chunks(by_lines, crilines(text))
    assert [r["lines"] for r in recs] == [3, 3, 1]
    assert [r.get("flags") for r in recs] == [["truncated"], ["continued", "truncated"], ["continued"]]
    assert "\n".join(r["message"] for r in recs) == text
    by_bytes = make_joiner(settings(format="cri", multiline="java", multiline_max_bytes=64), "x.log")
    recs = run_chunks(by_bytes, crilines(text))
    assert all(len(r["message"].encode()) <= 64 for r in recs) and len(recs) > 1
    assert "\n".join(r["message"] for r in recs) == text


def test_held_python_blank_lines_flush_as_records_of_their_own() -> None:
    joiner = make_joiner(settings(format="cri", multiline="python"), "x.log")
    recs = run_chunks(joiner,
                      crilines("ERROR:root:x\nTraceback (most recent call last):\n  File \"a\"\nKeyError: 1\n\n"))
    assert [r["message"] for r in recs] == ['ERROR:root:x\nTraceback (most recent call last):\n  File "a"\nKeyError: 1',
                                            "", ""]
