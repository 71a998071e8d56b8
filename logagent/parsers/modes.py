"""Multiline modes: how a line relates to the group (stack trace, panic dump) open in its stream.

Each mode is a `step(message, stream_state) -> action` function; `MultilineJoiner` applies the action:

    START  the line begins a new group (the open one is emitted first)
    CONT   the line belongs to the open group (only returned while a group is open)
    SOLO   the line is a record of its own (the open group is emitted first)
    HOLD   a line that belongs to the open group only if a continuation follows it (Python's blank lines
           around "During handling of ...", Node's blank line before the error of an uncaught exception);
           only returned while a group is open
    END    the line belongs to the open group and closes it (`multiline_end`)

`state.group` says whether a group is open; `state.mode` is free for the mode (e.g. Python's traceback phase);
`state.held` are the HOLD lines waiting; `state.hit` is the prefilter's verdict on the line.
The rules for java, python and go are those of shared/testdata/containers/README.md; node and ruby follow the
same idea for their runtimes' stack traces. Modes never look at more than the current line and their state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

START, CONT, SOLO, HOLD, END = 0, 1, 2, 3, 4


class StreamState(Protocol):
    group: Any  # the open group, or None
    mode: str
    held: list[Any]
    hit: bool  # the mode's prefilter found a keyword in the line (True for modes without one)


Step = Callable[[str, StreamState], int]

# A log timestamp at the start of a line: ISO-8601 with T or space (optionally bracketed), logback's HH:mm:ss.SSS,
# Tomcat's 14-May-2024 09:31:02.114.
_JAVA_START = re.compile(
    r"\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d"
    r"|\d\d:\d\d:\d\d[.,]\d{3}\b"
    r"|\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d"
    r"|(?:TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL|SEVERE)\s+\[?\d{4}-\d\d-\d\d"
    r'|Exception in thread "'
    r"|[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d\d:\d\d [AP]M "  # java.util.logging's first line; SEVERE: ... follows
)
# syslog (RFC 3164 as rsyslog/journald forward it): every line of a trace carries the prefix; the rules see the rest
_SYSLOG = re.compile(r"(?:<\d{1,3}>)?[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ [\w./-]+(?:\[\d+\])?: ")
_JAVA_TRACE_LINE = re.compile(r"\s|Caused by: |Suppressed: |\.\.\. \d+ |(?:[a-zA-Z_$][\w$]*\.)+[\w$]+(?::|$)")


def json_line(msg: str) -> bool:
    """A whole JSON object on one line (logstash/ECS/python-json-logger output): the README makes it one record,
    stack field and all, so it neither joins the trace open before it nor opens one."""
    return msg[:1] == "{" and msg.rstrip()[-1:] == "}"


def java(msg: str, st: StreamState) -> int:
    if _JAVA_START.match(msg):
        return START
    if msg[:1].isupper() or msg[:1] == "<":
        m = _SYSLOG.match(msg)
        if m is not None:
            # a syslog-prefixed line continues a trace only with a trace's shape; anything else is a new entry
            rest = msg[m.end():]
            if st.group is not None and not _JAVA_START.match(rest) and _JAVA_TRACE_LINE.match(rest):
                return CONT
            return START
    if st.group is None:
        return SOLO
    if msg[:1] != "{":  # the common continuation, without a call
        return CONT
    return SOLO if json_line(msg) else CONT


# Log headers: leading or bracketed timestamp, a level word then a timestamp, `LEVEL:` prefixes (uvicorn's
# "INFO:     ", logging's default "ERROR:name:"), and the uncaught-exception-in-thread banner.
_PY_HEADER = re.compile(
    r"\[?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d"
    r"|(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)(?::|\s+\[?\d{4}-\d\d-\d\d)"
    r"|Exception in thread "
)
_PY_TRACEBACK = "Traceback (most recent call last):"
_PY_CHAIN = re.compile(
    r"During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:"
)


def python(msg: str, st: StreamState) -> int:
    # phases: "header" (a log header or "Exception in thread" just began the group), "body" (indented lines after
    # a header or a chaining marker), "frames" (after a Traceback line), "chain" (a chaining marker), "closed"
    # (the final `Type: message` line came)
    open_ = st.group is not None
    phase = st.mode
    if not msg or msg.isspace():
        # only the blank lines around a chaining marker belong to the group: kept if the trace goes on
        return HOLD if open_ else SOLO
    first = msg[0]
    if first == " " or first == "\t":  # frames, code, carets, exception-group boxes
        if not open_:
            return SOLO
        if phase == "header" or phase == "chain":
            st.mode = "body"  # a Traceback line no longer directly follows the header / marker
        return CONT
    if msg.startswith(_PY_TRACEBACK):
        if open_ and phase in ("header", "chain"):
            st.mode = "frames"
            return CONT
        st.mode = "frames"
        return START
    if _PY_CHAIN.match(msg):
        st.mode = "chain"
        return CONT if open_ and phase in ("closed", "frames") else START
    if _PY_HEADER.match(msg):
        st.mode = "header"
        return START
    if json_line(msg):
        return SOLO
    if open_ and phase == "frames":  # `ExceptionType: message` after the frames closes the traceback
        st.mode = "closed"
        return CONT
    return SOLO


# A recovered panic is reported by net/http ("http: panic serving", "http2: panic serving") and by Kubernetes'
# HandleCrash / controller-runtime ("Observed a panic"); the goroutine dump follows on the next lines.
_GO_START = re.compile(r"panic: |fatal error: |SIG[A-Z]+: |.*?\b(?:http2?: panic serving |Observed a panic)")
_GO_GOROUTINE = re.compile(r"goroutine \d+ \[")
# a new log entry ends a dump: klog, the standard log package's prefix, JSON (zap, slog), ISO time, logfmt
_GO_ENTRY = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d|\{"
                       r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d|time=|level=")


def go(msg: str, st: StreamState) -> int:
    if _GO_START.match(msg):
        return START
    if _GO_ENTRY.match(msg):
        return SOLO
    if st.group is not None:
        return CONT
    if _GO_GOROUTINE.match(msg):  # a goroutine dump without a panic line (SIGQUIT, debug.Stack)
        return START
    return SOLO


# Indented frames ("    at f (file.js:1:2)"), properties of an error object and its closing brace, the
# "Node.js v20.11.1" footer of a crash, Node < 15's follow-up warnings of an unhandled rejection.
_NODE_CONT = re.compile(r"\s|[}\])]|Node\.js v\d|\(node:\d+\) (?:UnhandledPromiseRejectionWarning: Unhandled promise|"
                        r"\[DEP0018\])")
# An uncaught exception prints "file:line", the source line (indented or not: a top-level `throw` is not), a caret,
# a blank line, then the error itself: an Error, `[UnhandledPromiseRejection: ...] {` or any thrown value.
_NODE_UNCAUGHT = re.compile(r"(?:/|[A-Za-z]:\\|file://|node:)\S*:\d+$")
_NODE_CARET = re.compile(r"\s*\^+\s*$")


def node(msg: str, st: StreamState) -> int:
    open_ = st.group is not None
    phase = st.mode if open_ else ""
    if not msg:
        return HOLD if open_ else SOLO
    if phase == "uncaught":  # the source line
        st.mode = "source"
        return CONT
    if phase == "source" and _NODE_CARET.match(msg):
        st.mode = "caret"
        return CONT
    if phase == "caret":  # after the caret (and its blank line): the error as Node displays it
        st.mode = "error"
        return CONT
    if _NODE_CONT.match(msg):
        return CONT if open_ else SOLO
    st.mode = "uncaught" if _NODE_UNCAUGHT.match(msg) else ""
    return START


# Unindented backtrace frames as Logger and Rails print them ("app/models/order.rb:12:in `total'", Ruby 3.4's
# "in 'Order#total'"), and "... 5 levels..." elisions. An uncaught exception's first line is a frame followed by
# the message, so it does not match and starts a group; its "\tfrom ..." lines are indented.
_RUBY_FRAME = re.compile(r"\S+?:\d+:in [`'][^`']*'$|\s*\.\.\. \d+ levels\.\.\.$")


def ruby(msg: str, st: StreamState) -> int:
    open_ = st.group is not None
    if not msg:
        return HOLD if open_ else SOLO
    if msg[0] in " \t" or _RUBY_FRAME.match(msg):
        return CONT if open_ else SOLO
    return START


def custom(start: re.Pattern[str] | None, cont: re.Pattern[str] | None, end: re.Pattern[str] | None = None) -> Step:
    """`multiline_start`: a line matching it begins a group. `multiline_continue`: a line matching it joins the
    open group. With only start, every other line continues; with only continue, every other line starts.
    `multiline_end`: a line of the open group matching it joins and closes it (checked first)."""
    start_search = start.search if start is not None else None
    cont_search = cont.search if cont is not None else None
    end_search = end.search if end is not None else None

    def step(msg: str, st: StreamState) -> int:
        if end_search is not None and st.group is not None and end_search(msg):
            return END
        if cont_search is not None and st.group is not None and cont_search(msg):
            return CONT
        if start_search is None:
            return START
        if start_search(msg):
            return START
        if cont_search is None and st.group is not None:
            return CONT
        return SOLO

    return step


BUILTIN: dict[str, Step] = {"java": java, "python": python, "go": go, "node": node, "ruby": ruby}
