"""`multiline: auto`: stack traces and error dumps of every common runtime grouped in one pass, every other line left
alone.

One detector recognises the start, continuation and end of the traces of Java/Kotlin/Scala, Python, Go (panics,
goroutine dumps), Node.js, Ruby, PHP, C#/.NET and Dart in one stream (`MultilineJoiner` keeps stdout and stderr
apart). It is a `step` like the language modes, with phases in `state.mode`:

- A trace begins at a line that names it: `Traceback (most recent call last):`, a qualified exception class
  (`java.lang.IllegalStateException: ...`, `System.InvalidOperationException: ...`, `TypeError: ...`), `panic:`,
  `fatal error:`, `goroutine N [...]:`, Node's `file.js:42` uncaught-exception banner, `PHP Fatal error:`, Ruby's
  `file.rb:3:in 'm': message (NoMethodError)`, Dart's `Unhandled exception:`, .NET's `Unhandled exception.` and
  `fail:`/`crit:` console headers. An error-level log line (a header) may begin one too: it joins the trace that
  follows it directly (blank lines between allowed, as Spring prints one); `WARN`/`WARNING` lines count, since
  retries are often logged with their exception.
- A group is only kept when the runtime's own continuation shape follows (`\tat ...(File.java:1)`, indented Python
  frames, `\t/app/main.go:9 +0x2d`, `#0 ...` frames, ...). Lines that could belong (a header, a blank line, an
  exception line) wait as HOLD: if no continuation comes they are emitted as the records they were.
- Every other line is a record of its own: a group only ever takes lines of the shapes above.

Cost: before any regex, a batch is scanned once for the literal keywords every start contains (one Aho-Corasick
pass in C over the batch's messages, `hits`). A line without one, in a stream with no group open, is passed on
without any per-line Python work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from logagent.parsers.modes import CONT, HOLD, SOLO, START, StreamState, json_line

try:
    import ahocorasick_rs
except ImportError:  # pragma: no cover - a declared dependency; the regex gives the same answer, slower
    ahocorasick_rs = None  # type: ignore[assignment]

# Every line that can begin a group contains one of these (case-sensitive): checked per batch before anything else.
KEYWORDS = (
    "rror", "RROR", "WARN", "xception", "XCEPTION", "Traceback", "panic", "goroutine ", "SIG", "FATAL", "Fatal",
    "fatal", "SEVERE", "CRIT", "crit: ", "fail: ", "[ERR]", "[FTL]", ".js:", ".mjs:", ".cjs:", ".ts:", "node:",
    " AM ", " PM ",
)
_KEYWORD = re.compile("|".join(map(re.escape, KEYWORDS)))
_AUTOMATON = ahocorasick_rs.BytesAhoCorasick([k.encode() for k in KEYWORDS]) if ahocorasick_rs is not None else None
_MESSAGE = itemgetter("message")


def has_keyword(msg: str) -> bool:
    return _KEYWORD.search(msg) is not None


def hits(records: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the records whose message contains a keyword, in order: one pass over the whole batch. A whole-line
    JSON object is never one (it is a record of its own, whatever its fields say)."""
    msgs: list[str] = list(map(_MESSAGE, records))
    if _AUTOMATON is None:
        return [i for i, m in enumerate(msgs) if _KEYWORD.search(m) and not json_line(m)]
    text = "\n".join(msgs)
    data = text.encode("utf-8", "surrogatepass")
    found = _AUTOMATON.find_matches_as_indexes(data)
    if not found:
        return []
    if text.count("\n") != len(msgs) - 1:  # a message with a newline of its own: positions do not map to lines
        return [i for i, m in enumerate(msgs) if _KEYWORD.search(m) and not json_line(m)]
    out: list[int] = []
    line = 0
    pos = 0
    last = -1
    for _, start, _ in found:  # positions in order: the line of each is the newlines before it
        line += data.count(b"\n", pos, start)
        pos = start
        if line != last:
            last = line
            m = msgs[line]
            if m[:1] != "{" or not json_line(m):
                out.append(line)
    return out


# -- prefixes: syslog (RFC 3164 as rsyslog writes it) and PHP's error_log date; the rules see what follows --------
_PREFIX_FIRST = frozenset("<JFMASOND[")
_PREFIX = re.compile(
    r"(?:<\d{1,3}>)?[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ [\w./-]+(?:\[\d+\])?: "
    r"|\[\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d(?: [\w/+-]+)?\] (?=PHP )"
)


def body(msg: str) -> str:
    if msg[:1] in _PREFIX_FIRST:
        m = _PREFIX.match(msg)
        if m is not None:
            return msg[m.end():]
    return msg


# -- starts --------------------------------------------------------------------------------------------------------
# a qualified exception class (JVM languages, .NET) or a JavaScript error name, optionally after the JVM's
# uncaught banner or .NET's; the message after ": " is free
_EXCEPTION_CLASS = (
    r"(?:(?:[a-zA-Z_$][\w$]*\.)+[\w$]*(?:Exception|Error|Throwable|Fault|Failure)\w*"
    r"|(?:[A-Z][\w$]*)?(?:Error|Exception)(?: \[[A-Z_\d]+\])?)(?::(?: .*)?)?$"
)
EXCEPTION_LINE = re.compile(r"(?:Exception in thread \"[^\"]*\" |Unhandled exception\. |Uncaught )?" + _EXCEPTION_CLASS)
# after a header: the logged exception itself (an uncaught banner is a trace of its own, never a header's)
_LOGGED_EXCEPTION = re.compile(_EXCEPTION_CLASS)
_PY_TRACEBACK = re.compile(r"Traceback \(most recent call last\):$")
_PY_GROUP = re.compile(r"\s*\+ Exception Group Traceback \(most recent call last\):$")
_GO_START = re.compile(r"panic: |fatal error: |SIG[A-Z]+: ")  # and "panic serving", "Observed a panic" anywhere
_GO_GOROUTINE = re.compile(r"goroutine \d+ .*\]:$")
_NODE_BANNER = re.compile(r"(?:/|[A-Za-z]:\\|file://|node:)\S*:\d+$")
_NODE_REJECTION = re.compile(r"\(node:\d+\) UnhandledPromiseRejectionWarning: ")
_PHP_START = re.compile(r"(?:PHP )?Fatal error: ")
_RUBY_UNCAUGHT = re.compile(r"\S+:\d+:in .+\([A-Z][\w:]*\)$")
_DART_START = re.compile(r"Unhandled exception:$")
_FLUTTER_BOX = re.compile(r"═+╡ EXCEPTION CAUGHT BY ")
_DOTNET_HEADER = re.compile(r"(?:fail|crit): \S+\[\d+\]$")
_JUL_HEADER = re.compile(r"[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d\d:\d\d [AP]M \S+")

# -- continuations -------------------------------------------------------------------------------------------------
# "at" frames of the JVM, Node and .NET: a call with its parentheses, or Node's bare location `at file:1:2`
FRAME_AT = re.compile(
    r"\s+at (?:async |new )?(?:[^\s(]+(?: \[as [^\]]+\])? ?\(.*\)(?: in .+:line \d+)?(?: ~?\[[^\]]*\])*"
    r"|\S+:\d+:\d+|\[Source: .*)(?: \{)?$"
)
_FRAMES_MORE = re.compile(
    r"\s*(?:\.\.\. \d+ (?:more|common frames omitted|lines matching cause stack trace \.\.\.)"
    r"|--- End of (?:stack trace from previous location|inner exception stack trace) ---"
    r"|\(Use `node --trace-)"
)
_CHAINED = re.compile(r"\s*(?:Caused by|Suppressed): \S|\s*---> \S")
_NODE_FOOTER = re.compile(r"Node\.js v\d")
_NODE_WARNING = re.compile(r"\(node:\d+\) (?:UnhandledPromiseRejectionWarning|\[DEP0018\] DeprecationWarning): ")
_CARET = re.compile(r"\s*\^+\s*$")
_PY_CHAIN = re.compile(r"(?:During handling of the above exception, another exception occurred:"
                       r"|The above exception was the direct cause of the following exception:)$")
_PY_EXC = re.compile(r"[A-Za-z_][\w.]*(?::(?: .*)?|(?:Error|Exception|Interrupt|Exit|Iteration|Warning))$")
_GO_CONT = re.compile(
    r"goroutine \d+ .*\]:$|created by |\[signal |runtime stack:$|\.\.\.additional frames elided\.\.\.$"
    r"|[\w./*()\[\]{}<>@~-]+\(.*\)$|PC=0x|[a-z][a-z0-9]{1,5}\s+0x[0-9a-f]+$"
)
_GO_EXIT = re.compile(r"exit status \d+$")
RUBY_FRAME = re.compile(r"(?:\s+from )?\S+?:\d+:in [`'][^`']*'$|\s*\.\.\. \d+ levels\.\.\.$")
_PHP_CONT = re.compile(
    r"(?:PHP )?(?:Stack trace:$|#\d+ |\s+\d+\. |Next [\w\\]+)|\[stacktrace\]$|\[previous exception\] "
)
_PHP_HEAD = re.compile(r"(?:PHP )?Stack trace:$|\[stacktrace\]$")  # what may follow a header (not bare `#0`)
_PHP_END = re.compile(r"(?:PHP )?\s*thrown in .+ on line \d+$|\"\}\s*$")
_DART_FRAME = re.compile(r"#\d+\s+\S.*\(.*\)$|<asynchronous suspension>$")
_FLUTTER_END = re.compile(r"═{8,}$")
_DOTNET_CONT = "      "
_JUL_LEVEL = re.compile(r"(?:SEVERE|WARNING|INFO|CONFIG|FINE|FINER|FINEST): ")
MAX_HELD = 3  # lines waiting for a continuation (header, blank, exception line)


def _blank(text: str) -> bool:
    return not text or text.isspace()


_NEVER_AFTER_HEADER = frozenset("0123456789{")  # log lines and JSON: a new entry, never a trace's first line


def _after_header(b: str, st: StreamState) -> int | None:
    """A header (or a line like one) is open: only a trace's first lines take it."""
    if b[:1] in _NEVER_AFTER_HEADER:
        return None
    if _blank(b):
        return HOLD if len(st.held) < MAX_HELD else None
    if _PY_TRACEBACK.match(b):
        st.mode = "py"
        return CONT
    if _PY_GROUP.match(b):
        st.mode = "pygroup"
        return CONT
    if FRAME_AT.match(b):
        st.mode = "frames"
        return CONT
    if RUBY_FRAME.match(b):
        st.mode = "rb"
        return CONT
    if _GO_GOROUTINE.match(b):
        st.mode = "go"
        return CONT
    if _PHP_HEAD.match(b):
        st.mode = "php"
        return CONT
    if _LOGGED_EXCEPTION.match(b) and len(st.held) < MAX_HELD:
        st.mode = "exc"  # kept only if its frames follow
        return HOLD
    return None


def _frames(b: str, st: StreamState) -> int | None:
    """Inside JVM / Node / .NET frames (or right after the exception line)."""
    if FRAME_AT.match(b):
        st.mode = "jsobj" if b.endswith(" {") else "frames"
        return CONT
    if _FRAMES_MORE.match(b):
        st.mode = "frames"
        return CONT
    if _CHAINED.match(b):
        st.mode = "exc"
        return CONT
    if st.mode == "exc":  # an exception line not yet followed by a frame: only a blank line may come between
        return HOLD if _blank(b) and len(st.held) < MAX_HELD else None
    if b[:1] == "\t":  # Kotlin's "\t(Coroutine boundary)", nested suppressed traces
        return CONT
    if _NODE_FOOTER.match(b):
        st.mode = "end"
        return CONT
    if _NODE_WARNING.match(b):
        return CONT
    if _blank(b):  # Node's blank line before its version footer
        return HOLD if len(st.held) < MAX_HELD else None
    return None


def _continue(b: str, st: StreamState) -> int | None:
    mode = st.mode
    if mode == "hdr":
        return _after_header(b, st)
    if mode == "exc" or mode == "frames":
        return _frames(b, st)
    if mode == "py":
        if b[:1] in (" ", "\t"):
            return CONT
        if _PY_EXC.match(b):
            st.mode = "pyend"
            return CONT
        return None
    if mode == "pygroup":
        if b[:1] in (" ", "\t"):
            return CONT
        if _PY_CHAIN.match(b):
            st.mode = "pychain"
            return CONT
        return None
    if mode == "pyend" or mode == "pychain":
        if _blank(b):
            return HOLD if len(st.held) < MAX_HELD else None
        if _PY_CHAIN.match(b):
            st.mode = "pychain"
            return CONT
        if mode == "pychain" and _PY_TRACEBACK.match(b):
            st.mode = "py"
            return CONT
        if mode == "pychain" and _PY_GROUP.match(b):
            st.mode = "pygroup"
            return CONT
        return None
    if mode == "go":
        if _blank(b):
            return HOLD if len(st.held) < MAX_HELD else None
        if b[:1] in (" ", "\t") or _GO_CONT.match(b):
            return CONT
        if _GO_EXIT.match(b):
            st.mode = "end"
            return CONT
        return None
    if mode == "jsobj":  # the properties of a Node error object, up to its closing brace
        if b[:1] in (" ", "\t"):
            return CONT
        if b[:1] == "}":
            st.mode = "frames"
            return CONT
        return None
    if mode == "nsrc":  # Node's uncaught banner `file.js:42`: the source line (held), then a caret must come
        if _blank(b) or len(st.held) >= MAX_HELD:
            return None
        st.mode = "nsrc2"
        return HOLD
    if mode == "nsrc2":
        if _CARET.match(b):
            st.mode = "ngap"
            return CONT
        return None
    if mode == "ngap":  # after the caret: a blank line, then the error as Node displays it
        if _blank(b):
            return HOLD if len(st.held) < MAX_HELD else None
        st.mode = "jsobj" if b.endswith(" {") else "frames"
        return CONT
    if mode == "rb":
        if RUBY_FRAME.match(b) or b[:1] in (" ", "\t"):
            return CONT
        if _blank(b):  # error_highlight's blank line before the code snippet
            return HOLD if len(st.held) < MAX_HELD else None
        return None
    if mode == "php":
        if _PHP_CONT.match(b):
            return CONT
        if _PHP_END.match(b):
            st.mode = "phpend"
            return CONT
        if _blank(b):
            return HOLD if len(st.held) < MAX_HELD else None
        return None
    if mode == "phpend":  # "thrown in" ends a trace; only PHP's chained "Next ..." goes on
        if _blank(b):
            return HOLD if len(st.held) < MAX_HELD else None
        if _PHP_CONT.match(b):
            st.mode = "php"
            return CONT
        return None
    if mode == "dartmsg":  # the line after "Unhandled exception:" is the error's text
        if _blank(b):
            return None
        st.mode = "dart"
        return CONT
    if mode == "dart":
        return CONT if _DART_FRAME.match(b) else None
    if mode == "flutter":
        if _FLUTTER_END.match(b):
            st.mode = "end"
        return CONT
    if mode == "dotnet":
        return CONT if b.startswith(_DOTNET_CONT) else None
    if mode == "jul":  # the JDK's two-line layout: the level line waits for a trace like a header does
        if _JUL_LEVEL.match(b) and len(st.held) < MAX_HELD:
            st.mode = "hdr"
            return HOLD
        return None
    if mode == "end":
        if _blank(b):
            return HOLD if len(st.held) < MAX_HELD else None
        if _NODE_FOOTER.match(b):
            return CONT
        return None
    return None


def _begin(msg: str, b: str, st: StreamState) -> int:
    """A line in a stream with no group (or one its group does not take): a start, or a record of its own."""
    if not st.hit or json_line(b):
        return SOLO
    if "panic serving " in b or "Observed a panic" in b:  # a log line reporting a recovered panic
        st.mode = "go"
        return START
    first = b[:1]
    if first.isdigit() or first == "[" or first == "{":
        st.mode = "hdr"  # a log line (timestamp, bracketed header): only a header
        return START
    if _PY_TRACEBACK.match(b):
        st.mode = "py"
    elif _PY_GROUP.match(b):
        st.mode = "pygroup"
    elif _GO_START.match(b) or _GO_GOROUTINE.match(b):
        st.mode = "go"
    elif _NODE_BANNER.match(b):
        st.mode = "nsrc"
    elif _NODE_REJECTION.match(b):
        st.mode = "exc"
    elif _PHP_START.match(b):
        st.mode = "php"
    elif ":in " in b and _RUBY_UNCAUGHT.match(b):
        st.mode = "rb"
    elif _DART_START.match(b):
        st.mode = "dartmsg"
    elif _FLUTTER_BOX.match(b):
        st.mode = "flutter"
    elif _DOTNET_HEADER.match(b):
        st.mode = "dotnet"
    elif _JUL_HEADER.match(b):
        st.mode = "jul"
    elif EXCEPTION_LINE.match(b):
        st.mode = "exc"
    else:
        st.mode = "hdr"  # an error-level log line: it takes a trace that follows directly
    return START


def auto(msg: str, st: StreamState) -> int:
    b = body(msg)
    if st.group is not None:
        action = _continue(b, st)
        if action is not None:
            return action
    return _begin(msg, b, st)
