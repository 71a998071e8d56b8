"""/metrics, /healthz and /readyz of a running agent (`python -m logagent run`, file input -> file output): the
counters move exactly with the records written, the file lag drains to 0, and the endpoints say what they mean."""

from __future__ import annotations

import pytest
import yaml

from logagent.http import parse_address
from tests.helpers import wait_for
from tests.ops_support import Agent, agent_base_url, http_get, read_jsonl, sample, scrape, wait_http_up, write_lines


def agent_config(tmp_path, logs, out, **http):
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "http": {"address": "127.0.0.1:0", **http},
        "inputs": [{"type": "file", "name": "app", "paths": [str(logs / "*.log")], "poll_interval": "200ms"}],
        "outputs": [{"type": "file", "name": "sink", "path": str(out)}],
    }))
    return config


def test_counters_move_exactly_with_the_records_written(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out.jsonl"
    log_file = logs / "app.log"
    agent = Agent(agent_config(tmp_path, logs, out), tmp_path)
    try:
        base = agent_base_url(agent)
        wait_http_up(base)
        before = scrape(base)
        assert sample(before, "logagent_input_records_total", input="app") == 0

        sent_bytes = write_lines(log_file, [f"first {i:05d} " + "x" * (i % 50) for i in range(1000)])
        wait_for(lambda: len(read_jsonl(out)) == 1000, 30, 0.05, "1000 records shipped")
        path = str(log_file)

        def settled(expect_records: int, expect_bytes: int):
            s = scrape(base)
            if (sample(s, "logagent_output_records_total", output="sink") == expect_records
                    and sample(s, "logagent_file_lag_bytes", input="app", path=path) == 0
                    and ("logagent_file_lag_bytes", (("input", "app"), ("path", path))) in s
                    and sample(s, "logagent_input_bytes_total", input="app") == expect_bytes):
                return s
            return None

        s = wait_for(lambda: settled(1000, sent_bytes), 30, 0.1, "output counters and lag to settle")
        assert sample(s, "logagent_input_records_total", input="app") == 1000
        assert sample(s, "logagent_input_bytes_total", input="app") == sent_bytes
        assert sample(s, "logagent_output_records_total", output="sink") == 1000
        # The file output counts the bytes it wrote: exactly the output file's size.
        assert sample(s, "logagent_output_bytes_total", output="sink") == out.stat().st_size
        assert sample(s, "logagent_files_tracked", input="app") == 1
        assert sample(s, "logagent_queue_batches", queue="pipeline") == 0
        assert sample(s, "logagent_queue_batches", queue="output:sink") == 0
        assert sample(s, "process_resident_memory_bytes") > 10 * 1024 * 1024
        assert sample(s, "process_cpu_seconds_total") > 0

        # A second burst moves every counter by exactly its own size.
        more_bytes = write_lines(log_file, [f"second {i:05d}" for i in range(337)])
        s2 = wait_for(lambda: settled(1337, sent_bytes + more_bytes), 30, 0.1, "the second burst counted")
        assert sample(s2, "logagent_input_records_total", input="app") == 1337
        assert sample(s2, "logagent_output_bytes_total", output="sink") == out.stat().st_size
        assert len(read_jsonl(out)) == 1337
        assert sample(s2, "logagent_errors_total", component="app", kind="read_failed") == 0
    finally:
        assert agent.stop() == 0


class UnavailableBackend:
    """An HTTP server on 127.0.0.1 that answers every request 503, as an overloaded Elasticsearch does."""

    def __init__(self) -> None:
        import http.server
        import threading

        backend = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                backend.requests += 1
                body = b'{"error":{"type":"unavailable_shards_exception","reason":"busy"},"status":503}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST  # noqa: N815
            do_HEAD = do_POST  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_lag_and_retries_show_records_the_backend_has_not_acknowledged(tmp_path):
    """With the backend answering 503, nothing is acknowledged: the lag is every byte written, retries count up,
    output records stay 0; once the agent stops, the unacknowledged lines are still unread in the checkpoint."""
    logs = tmp_path / "logs"
    logs.mkdir()
    backend = UnavailableBackend()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "grace_period": "1s",
        "http": {"address": "127.0.0.1:0"},
        "inputs": [{"type": "file", "name": "app", "paths": [str(logs / "*.log")], "poll_interval": "200ms"}],
        "outputs": [{"type": "elasticsearch", "name": "es", "url": backend.url,
                     "batch": {"max_wait": "50ms"}, "retry": {"initial_backoff": "50ms", "max_backoff": "200ms"}}],
    }))
    agent = Agent(config, tmp_path)
    try:
        base = agent_base_url(agent)
        wait_http_up(base)
        written = write_lines(logs / "app.log", [f"line {i}" for i in range(200)])
        path = str(logs / "app.log")
        s = wait_for(lambda: (lambda s: s if sample(s, "logagent_output_retries_total", output="es") >= 3
                              and sample(s, "logagent_input_records_total", input="app") == 200
                              and sample(s, "logagent_file_lag_bytes", input="app", path=path) == written
                              else None)(scrape(base)), 30, 0.1, "retries counted and the lag at its full size")
        assert sample(s, "logagent_output_records_total", output="es") == 0
        assert not [k for k, v in s.items() if k[0] == "logagent_dead_lettered_records_total" and v], s
        assert backend.requests >= 3
    finally:
        agent.stop()
        backend.close()


def test_readyz_and_healthz_answer_json_and_404_elsewhere(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    agent = Agent(agent_config(tmp_path, logs, tmp_path / "out.jsonl"), tmp_path)
    try:
        base = agent_base_url(agent)
        wait_http_up(base)
        assert http_get(base + "/healthz") == (200, b'{"status":"ok","reason":"ok"}')
        assert http_get(base + "/readyz") == (200, b'{"status":"ready","not_ready":{}}')
        assert http_get(base + "/nothing-here")[0] == 404
    finally:
        assert agent.stop() == 0


def test_an_address_in_use_stops_the_start_with_a_clear_message(tmp_path):
    import socket

    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "a.log", ["not read: the agent does not start"])
    out = tmp_path / "out.jsonl"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = taken.getsockname()
        config = agent_config(tmp_path, logs, out, address=f"{host}:{port}")
        agent = Agent(config, tmp_path)
        rc = agent.stop_when_exited(60)
    assert rc == 1
    err = agent.stderr_path.read_text()
    assert (f"logagent: cannot start: {config}: http.address: cannot listen on {host}:{port} for /metrics, "
            "/healthz and /readyz: address already in use") in err.lower()
    assert "Traceback" not in err
    assert not out.exists() or read_jsonl(out) == []


def test_config_reload_gauge_reads_1_at_start(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    agent = Agent(agent_config(tmp_path, logs, tmp_path / "out.jsonl"), tmp_path)
    try:
        base = agent_base_url(agent)
        wait_http_up(base)
        s = scrape(base)
        assert ("logagent_config_last_reload_successful", ()) in s
        assert sample(s, "logagent_config_last_reload_successful") == 1
        assert sample(s, "logagent_config_reloads_total", result="rejected") == 0
    finally:
        assert agent.stop() == 0


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:2020", ("127.0.0.1", 2020)), ("[::1]:9", ("::1", 9)), (":2020", ("", 2020)),
])
def test_http_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["2020", "::1:2020", "host:99999", "host:"])
def test_http_address_mistakes_are_rejected(text):
    with pytest.raises(ValueError):
        parse_address(text)


@pytest.mark.parametrize("data,expected", [
    ({}, ("127.0.0.1", 2020)),
    ({"address": "10.0.0.7", "port": 2020}, ("10.0.0.7", 2020)),
    ({"address": "fd00::7", "port": 2021}, ("fd00::7", 2021)),
    ({"address": "[fd00::7]", "port": "2022"}, ("fd00::7", 2022)),
    ({"port": 9}, ("127.0.0.1", 9)),
])
def test_http_settings_take_host_and_port_separately_for_downward_api_addresses(data, expected):
    from logagent.config import Section
    from logagent.http import parse_server_settings

    s = parse_server_settings(Section(data, "http", "cfg.yaml"))
    assert (s.host, s.port) == expected


@pytest.mark.parametrize("data,message", [
    ({"address": "10.0.0.7:2020", "port": 2020}, "cfg.yaml: http.address: with port set, address is a host"),
    ({"address": "", "port": 2020}, "cfg.yaml: http.address: with port set, address is a host"),
    ({"port": 70000}, "cfg.yaml: http.port: must be at most 65535"),
    ({"address": "nowhere"}, 'cfg.yaml: http.address: expected HOST:PORT like "127.0.0.1:2020"'),
    ({"stall_timeout": "100ms"}, "cfg.yaml: http.stall_timeout: must be at least 1s"),
    ({"adress": "x:1"}, "cfg.yaml: http.adress: unknown key"),
])
def test_http_settings_mistakes_name_the_key(data, message):
    from logagent.config import ConfigError, Section
    from logagent.http import parse_server_settings

    with pytest.raises(ConfigError) as e:
        parse_server_settings(Section(data, "http", "cfg.yaml"))
    assert str(e.value).startswith(message), str(e.value)
