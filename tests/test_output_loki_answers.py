"""Reading Loki's 400 answers back into refused entries: messages whose label values hold braces, quotes, "; " and
newlines, grouped counts, labels Loki added, the ingester's per-entry list, and answers that name nothing."""

from __future__ import annotations

from logagent.outputs.loki import label_string
from logagent.outputs.loki_answers import go_time_ns, parse_label_set, refused
from logagent.timefmt import rfc3339_ns
from tests.receivers.loki import go_time_string, grouped_errors, label_text, rfc3339

ODD = {"app": 'we}b; "x"', "pod": "p\\1\nq"}


def _item(labels: dict[str, str], ts: int, line: str = "x") -> tuple[str, int, str, tuple[tuple[str, str], ...]]:
    return (label_string(list(labels.items())), ts, line, ())


def test_a_label_set_with_braces_quotes_and_separators_is_found() -> None:
    base = 1_714_557_600_000_000_000
    items = [_item(ODD, base), _item(ODD, base + 5_000_000_000), _item({"app": "other"}, base)]
    shown = label_text({**ODD, "service_name": ODD["app"]})  # as Loki prints it, with the label it added
    body = grouped_errors([f"entry for stream '{shown}' has timestamp too old: {rfc3339(base)}, oldest acceptable "
                           f"timestamp is: {rfc3339(base + 3_000_000_000)}"] * 2 +
                          [f"stream '{label_text({'app': 'other'})}' has label value too long: 'other'"])
    rejected, retry, causes = refused(items, body)
    assert causes == 2 and retry == []
    assert [i for i, _ in rejected] == [0, 2]
    assert rejected[0][1].startswith("2 errors like: entry for stream") and "too old" in rejected[0][1]
    assert rejected[1][1].startswith("1 errors like: stream '{app=\"other\"}' has label value too long")
    assert parse_label_set(shown) == {**ODD, "service_name": ODD["app"]}


def test_time_formats_round_trip() -> None:
    ns = 1_714_557_600_123_456_789
    assert go_time_ns(go_time_string(ns)) == ns
    assert go_time_ns(go_time_string(ns - 123_456_789)) == ns - 123_456_789
    assert rfc3339_ns(rfc3339(ns)) // 1_000_000_000 == ns // 1_000_000_000
    assert rfc3339_ns("2024-05-01T12:00:00.5+02:00") == rfc3339_ns("2024-05-01T10:00:00.5Z")


def test_the_ingester_list_names_one_stream_and_the_others_are_retried() -> None:
    base = 1_714_557_600_000_000_000
    a, b = {"app": "a"}, {"app": "b"}
    items = [_item(a, base + i) for i in range(3)] + [_item(b, base)]
    listed = "".join(f"entry with timestamp {go_time_string(base + i)} ignored, reason: 'entry out of order',\n"
                     for i in (0, 2))
    body = f"{listed}user 'fake', total ignored: 2 out of 3 for stream: {label_text(a)}"
    rejected, retry, causes = refused(items, body)
    assert [i for i, _ in rejected] == [0, 2] and retry == [3] and causes == 1
    assert rejected[0][1].startswith("entry out of order (user 'fake', total ignored: 2 out of 3")


def test_an_answer_naming_nothing_we_sent_has_no_cause() -> None:
    items = [_item({"app": "a"}, 1)]
    assert refused(items, "tenant 'x' is not allowed") == ([], [], 0)
    # a message for a stream we did not send names no item of ours
    rejected, retry, causes = refused(items, "stream '{app=\"zzz\"}' has label value too long: 'zzz'")
    assert rejected == [] and retry == []
