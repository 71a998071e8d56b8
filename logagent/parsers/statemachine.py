"""`multiline: custom` with `multiline_rules`: a state machine over lines, as Fluent Bit's multiline parsers express.

Each rule is `{state, regex, next_state}`. A line in a stream with no group open (or that its group's state does
not take) begins a group when a rule of state `start_state` matches it; the group's state becomes that rule's
`next_state`. While a group is open, a line matching a rule of the group's current state joins it and moves it
to that rule's `next_state`. A line no rule takes closes the open group and is a record of its own (or starts the
next group). Regexes are searched anywhere in the line (anchor with `^`), rules of a state in the order given.

`parse_rules(section, key)` validates the list at load time: every error names the file and the key path
(`inputs[0].multiline_rules[2].next_state: ...`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from logagent.config import Section
from logagent.parsers.modes import CONT, SOLO, START, Step, StreamState

START_STATE = "start_state"


@dataclass(frozen=True)
class Rule:
    state: str
    regex: re.Pattern[str]
    next_state: str


def parse_rules(section: Section, key: str) -> tuple[Rule, ...]:
    items = section.sections(key)
    if not items:
        raise section.error("expected a non-empty list of {state, regex, next_state}", key)
    rules: list[Rule] = []
    for item in items:
        state = item.str("state")
        text = item.str("regex")
        try:
            regex = re.compile(text)
        except re.error as e:
            raise item.error(f"invalid regular expression {text!r}: {e}", "regex") from None
        rules.append(Rule(state, regex, item.str("next_state")))
        item.done()
    states = {r.state for r in rules}
    if START_STATE not in states:
        raise section.error(f"no rule has state {START_STATE!r}: nothing could begin a group", key)
    for i, r in enumerate(rules):
        if r.next_state not in states:
            raise items[i].error(f"state {r.next_state!r} has no rules (states: {', '.join(sorted(states))})",
                                 "next_state")
    return tuple(rules)


def state_machine(rules: tuple[Rule, ...]) -> Step:
    by_state: dict[str, list[tuple[object, str]]] = {}
    for r in rules:
        by_state.setdefault(r.state, []).append((r.regex.search, r.next_state))
    starts = by_state[START_STATE]

    def step(msg: str, st: StreamState) -> int:
        if st.group is not None:
            for search, nxt in by_state.get(st.mode, ()):
                if search(msg):  # type: ignore[operator]
                    st.mode = nxt
                    return CONT
        for search, nxt in starts:
            if search(msg):  # type: ignore[operator]
                st.mode = nxt
                return START
        return SOLO

    return step
