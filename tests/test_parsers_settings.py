"""Parser settings (through the file input's section, as the agent reads them), make_joiner with pod annotation
overrides, the `json` stage / `parser: json`, and `logagent cat` on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from logagent.config import ConfigError, Section
from logagent.inputs.file.settings import parse_file_settings
from logagent.parsers.base import RawJoiner
from logagent.parsers.cri import CriJoiner
from logagent.parsers.factory import ParserSettings, make_joiner, parse_parser_settings
from logagent.parsers.jsonbody import JsonBody, JsonBodyJoiner
from logagent.parsers.multiline import MultilineJoiner
from logagent.record import Batch
from tests.parsers_support import DATA, run_chunks, settings

T = "2024-05-14T09:00:00.5Z"
T_NS = int(datetime(2024, 5, 14, 9, 0, 0, tzinfo=timezone.utc).timestamp()) * 10**9 + 500_000_000


def test_defaults() -> None:
    s = parse_parser_settings(Section({}, "inputs[0]", "a.yaml"))
    assert s == ParserSettings(format="raw", multiline="none", multiline_flush=2.0, multiline_max_lines=1000,
                               multiline_max_bytes=1 << 20, max_record_bytes=1 << 20, parser="text")
    assert isinstance(make_joiner(s, "x.log"), RawJoiner)


def test_file_input_reads_parser_keys_and_still_rejects_typos() -> None:
    sec = Section({"paths": ["/var/log/pods/*/*/*.log"], "format": "cri", "multiline": "java",
                   "multiline_flush": "500ms", "max_record_bytes": "64KiB", "parser": "json"}, "inputs[0]", "a.yaml")
    fs = parse_file_settings(sec)
    assert (fs.parser.format, fs.parser.multiline, fs.parser.multiline_flush, fs.parser.max_record_bytes,
            fs.parser.parser) == ("cri", "java", 0.5, 65536, "json")
    typo = Section({"paths": ["/x/*.log"], "format": "cri", "multline": "java"}, "inputs[0]", "a.yaml")
    with pytest.raises(ConfigError, match=r"a.yaml: inputs\[0\].multline: unknown key"):
        parse_file_settings(typo)


@pytest.mark.parametrize("keys,message", [
    ({"format": "syslog"}, r"inputs\[0\].format: expected one of auto, cri, docker, raw"),
    ({"multiline": "custom"}, r"inputs\[0\].multiline: multiline: custom needs"),
    ({"multiline": "custom", "multiline_start": "("}, r"inputs\[0\].multiline_start: invalid regular expression"),
    ({"multiline": "java", "multiline_start": "^x"}, r"inputs\[0\].multiline_start: is only used with"),
    ({"max_record_bytes": "10"}, r"inputs\[0\].max_record_bytes: must be at least 64"),
    ({"parser": "xml"}, r"inputs\[0\].parser: expected one of text, json"),
    ({"multiline_flush": "soon"}, r"inputs\[0\].multiline_flush: expected a duration"),
])
def test_bad_settings_name_the_key(keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_parser_settings(Section(keys, "inputs[0]", "a.yaml"))


def test_annotation_overrides_choose_multiline_and_json_for_one_file() -> None:
    base = settings(format="cri")
    j = make_joiner(base, "/var/log/pods/a/b/0.log", {"multiline": "java", "parser": "json"})
    assert isinstance(j, JsonBodyJoiner) and isinstance(j.inner, MultilineJoiner)
    data = (f'{T} stdout F {{"level":"info","msg":"hi"}}\n{T} stdout F 2024-05-14 09:00:00 ERROR x\n'
            f"{T} stdout F \tat A.b(A.java:1)\n").encode()
    recs = run_chunks(j, data)
    assert recs[0]["json"] == {"level": "info", "msg": "hi"}
    assert recs[1]["message"] == "2024-05-14 09:00:00 ERROR x\n\tat A.b(A.java:1)" and "json" not in recs[1]
    # an annotation this version does not know is ignored, not fatal
    plain = make_joiner(base, "/x.log", {"multiline": "cobol", "parser": "xml"})
    assert isinstance(plain, CriJoiner)


def test_parser_json_flags_invalid_bodies_and_keeps_text() -> None:
    j = make_joiner(settings(format="cri", parser="json", json_key="body"), "x.log")
    recs = run_chunks(j, f"{T} stdout F {{broken\n{T} stdout F plain text\n{T} stdout F {{\"a\":[1]}}\n".encode())
    assert [(r["message"], r.get("flags"), r.get("body")) for r in recs] == [
        ("{broken", ["json_invalid"], None), ("plain text", None, None), ('{"a":[1]}', None, {"a": [1]})]


def _stage(**keys: object) -> JsonBody:
    sec = Section(keys, "pipeline[0]", "a.yaml")
    return JsonBody("json", JsonBody.parse_settings(sec), None)  # type: ignore[arg-type]


def test_json_stage_default_puts_fields_under_json() -> None:
    batch = Batch("kube", [{"message": '{"level":"warn","n":1}', "offset": 0}, {"message": "text", "offset": 9},
                           {"message": '{"a":', "offset": 20}])
    out = list(_stage().process(batch))
    assert out == [batch]
    assert batch.records == [
        {"message": '{"level":"warn","n":1}', "offset": 0, "json": {"level": "warn", "n": 1}},
        {"message": "text", "offset": 9},
        {"message": '{"a":', "offset": 20, "flags": ["json_invalid"]}]


def test_json_stage_merge_into_record_never_overwrites_record_fields() -> None:
    batch = Batch("kube", [{"message": '{"offset":5,"msg":"m","stream":"x"}', "offset": 0, "stream": "stdout"}])
    _stage(target="", keep_message=False, flag_invalid=False).process(batch)
    # `offset` is the record's position (an identity field): the body's value is kept aside and the record flagged
    assert batch.records == [{"offset": 0, "stream": "stdout", "json_offset": 5, "msg": "m", "json_stream": "x",
                              "flags": ["identity_field"]}]


def test_json_stage_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"pipeline\[0\].tagret: unknown key"):
        _stage(tagret="x")


def _cat(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "logagent", "cat", *args], capture_output=True, timeout=60)


def test_cat_reports_bad_files_and_goes_on(tmp_path: Path) -> None:
    missing = tmp_path / "gone.log"
    proc = _cat(str(missing), str(tmp_path), str(DATA / "cri_local_tz.log"))
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"{missing}: No such file or directory" in err and f"{tmp_path}: Is a directory" in err
    assert len(proc.stdout.decode().splitlines()) == 4


def test_cat_prints_flags_json_and_all_fields(tmp_path: Path) -> None:
    f = tmp_path / "0.log"
    f.write_bytes(f'not cri\n{T} stdout F {{"k":1}}\n{T} stderr P cut'.encode() + b"\xff\n")
    proc = _cat("--format", "cri", "--parser", "json", "--all", str(f))
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert got == [
        {"message": "not cri", "fragments": 1, "lines": 1, "flags": ["unparsed"], "offset": 0},
        {"time": T, "stream": "stdout", "message": '{"k":1}', "fragments": 1, "lines": 1, "json": {"k": 1},
         "offset": 8, "time_ns": T_NS},
        {"time": T, "stream": "stderr", "message": "cut\ufffd", "fragments": 1, "lines": 1,
         "flags": ["invalid_utf8", "incomplete"], "offset": 8 + len(T) + 18, "time_ns": T_NS},
    ]


def test_cat_rejects_bad_options() -> None:
    proc = _cat("--multiline", "custom", "--multiline-start", "(", str(DATA / "cri_basic.log"))
    assert proc.returncode == 2 and b"multiline_start: invalid regular expression" in proc.stderr
