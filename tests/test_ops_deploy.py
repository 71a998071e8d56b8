"""The deployment files as data: Kubernetes manifests, the systemd unit, the Dockerfile and the production config
agree with each other and with what the code really does (paths it reads, endpoints it serves, capabilities it
needs)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from logagent import privileges, registry
from logagent.config import ConfigError, load_yaml, parse_config
from logagent.http import parse_server_settings
from tests.ops_support import REPO, Agent, agent_base_url, http_get, wait_http_up

CONF = REPO / "conf"
K8S = CONF / "kubernetes"
UNIT = CONF / "systemd" / "logagent.service"
PROD_CONFIG = CONF / "logagent.yaml"
NAMESPACED = {"ServiceAccount", "ConfigMap", "DaemonSet", "Role", "RoleBinding"}


# -- readers --------------------------------------------------------------------------------------------------
def manifest_files() -> list[Path]:
    """What `kubectl apply -f conf/kubernetes/` reads: every .yaml/.yml/.json file in the directory, in name order."""
    return sorted(p for p in K8S.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in manifest_files():
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def daemonset_container() -> dict[str, Any]:
    containers = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def daemonset_env(pod_ip: str = "10.1.2.3") -> dict[str, str]:
    """The DaemonSet's env as the agent sees it, downward-API fields filled in with plausible values."""
    field_values = {"spec.nodeName": "node-1", "status.podIP": pod_ip}
    env = {}
    for item in daemonset_container()["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def unit_settings() -> dict[str, list[str]]:
    """systemd unit as {"Section.Key": [values...]} (keys may repeat; comments and blank lines skipped)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def config_mount_path() -> str:
    """Where the DaemonSet puts the ConfigMap's config file."""
    ds_spec = one("DaemonSet")["spec"]["template"]["spec"]
    cm_name = one("ConfigMap")["metadata"]["name"]
    volume = next(v for v in ds_spec["volumes"] if v.get("configMap", {}).get("name") == cm_name)
    mount = next(m for m in daemonset_container()["volumeMounts"] if m["name"] == volume["name"])
    (key,) = one("ConfigMap")["data"]
    return f"{mount['mountPath']}/{key}"


def production_config(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_config(load_yaml(PROD_CONFIG.read_text(), str(PROD_CONFIG)), str(PROD_CONFIG))


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# -- Kubernetes manifests -------------------------------------------------------------------------------------
def test_every_manifest_file_is_a_list_of_kubernetes_objects_in_the_logagent_namespace():
    docs = manifests()
    assert sorted(d["kind"] for d in docs) == sorted(
        ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap",
         "DaemonSet"])
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
        if doc["kind"] in NAMESPACED:
            assert doc["metadata"]["namespace"] == "logagent", doc["kind"]
        else:
            assert "namespace" not in doc["metadata"], doc["kind"]
    # `kubectl apply -f DIR` applies files in name order: the namespace must come first.
    first = next(d for d in yaml.safe_load_all(manifest_files()[0].read_text()) if d)
    assert first["kind"] == "Namespace"


def test_kustomization_lists_exactly_the_files_kubectl_apply_f_reads():
    kustomization = yaml.safe_load((K8S / "Kustomization").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    # A kustomization.yaml in this directory would be read by `kubectl apply -f` as an object of an unknown kind.
    assert not (K8S / "kustomization.yaml").exists() and not (K8S / "kustomization.yml").exists()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_apply_k_builds_the_same_objects_as_apply_f():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]

    def identity(d: dict[str, Any]) -> tuple[str, str, str, str]:
        return d["apiVersion"], d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]

    assert sorted(map(identity, built)) == sorted(map(identity, manifests()))
    assert {identity(d): d for d in built} == {identity(d): d for d in manifests()}


def test_rbac_grants_what_the_components_call_only():
    rules = one("ClusterRole")["rules"]
    grants = {(group, res, verb) for r in rules for group in r["apiGroups"] for res in r["resources"]
              for verb in r["verbs"]}
    assert grants == {
        ("", "pods", "list"), ("", "pods", "watch"),  # kubernetes stage: the node's pods (no get, no namespaces)
        ("", "nodes/status", "patch"),  # node_problems: conditions
        ("", "events", "create"), ("", "events", "patch"),  # node_problems: events and their series count
        ("", "events", "list"), ("", "events", "watch"),  # kube_events
    }
    role = one("Role")
    assert role["metadata"]["namespace"] == "logagent"
    assert {(g, res, verb, tuple(r.get("resourceNames", ()))) for r in role["rules"] for g in r["apiGroups"]
            for res in r["resources"] for verb in r["verbs"]} == {
        ("coordination.k8s.io", "leases", "create", ()),
        ("coordination.k8s.io", "leases", "get", ("logagent-kube-events",)),
        ("coordination.k8s.io", "leases", "update", ("logagent-kube-events",))}
    assert one("RoleBinding")["roleRef"]["name"] == role["metadata"]["name"]
    assert one("RoleBinding")["subjects"] == [{"kind": "ServiceAccount", "name": "logagent", "namespace": "logagent"}]
    binding = one("ClusterRoleBinding")
    sa = one("ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one("ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert one("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_daemonset_runs_on_every_node_as_node_critical_with_bounded_resources():
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}]  # no key, no effect: every taint
    assert spec["priorityClassName"] == "system-node-critical"
    c = daemonset_container()
    assert set(c["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in c["resources"]["limits"]
    # Graceful shutdown (grace_period in the config) must fit in the kubelet's termination grace.
    cfg_grace = yaml.safe_load(PROD_CONFIG.read_text())["grace_period"]
    from logagent.config import parse_duration

    assert parse_duration(cfg_grace) < spec["terminationGracePeriodSeconds"]


def test_daemonset_security_context_is_minimal_and_read_only():
    sc = daemonset_container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == privileges.kubernetes_names()


def test_configmap_holds_the_production_config_byte_for_byte():
    assert one("ConfigMap")["data"] == {"logagent.yaml": PROD_CONFIG.read_text()}


def test_every_hostpath_is_used_by_the_production_config_and_every_config_path_is_mounted(monkeypatch):
    cfg = production_config(daemonset_env(), monkeypatch)
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in daemonset_container()["volumeMounts"]}
    host_mounts = {path: m for path, m in mounts.items() if "hostPath" in volumes[m["name"]]}
    for path, m in host_mounts.items():
        assert volumes[m["name"]]["hostPath"]["path"] == path, "host paths are mounted at the same path"

    globs = [(c.name, g) for c in cfg.inputs if c.type == "file" for g in c.section.data["paths"]]
    devices = [c.section.data.get("path", "/dev/kmsg") for c in cfg.inputs if c.type == "kmsg"]
    used_by: dict[str, list[str]] = {path: [] for path in host_mounts}
    for name, glob in globs:
        holders = [p for p in host_mounts if under(glob, p)]
        assert holders, f"input {name} reads {glob}, which no hostPath mount provides"
        for p in holders:
            used_by[p].append(name)
    for device in devices:
        assert device in host_mounts, f"{device} is read but not mounted"
        used_by[device].append("kmsg")
    assert under(cfg.state_dir, next(p for p in host_mounts if under(cfg.state_dir, p)))
    used_by[next(p for p in host_mounts if under(cfg.state_dir, p))].append("state_dir")
    assert all(used_by.values()), f"hostPath mounts the config does not use: {[p for p, u in used_by.items() if not u]}"

    # Read-only everywhere except the state directory, which must be writable.
    for path, m in host_mounts.items():
        if under(cfg.state_dir, path):
            assert not m.get("readOnly", False), path
        else:
            assert m.get("readOnly") is True, path
    assert volumes[host_mounts["/dev/kmsg"]["name"]]["hostPath"]["type"] == "CharDevice"


def test_production_config_parses_with_the_daemonset_and_the_unit_environments(monkeypatch):
    ds = production_config(daemonset_env(pod_ip="10.1.2.3"), monkeypatch)
    http = parse_server_settings(ds.http)
    assert (http.host, http.port) == ("10.1.2.3", 2020)
    assert ds.state_dir == "/var/lib/logagent"
    # IPv6 clusters: status.podIP is a bare literal, which `address` + `port` takes as it is.
    ds6 = production_config(daemonset_env(pod_ip="fd00:10::7"), monkeypatch)
    assert (parse_server_settings(ds6.http).host, parse_server_settings(ds6.http).port) == ("fd00:10::7", 2020)
    # The unit sets LOGAGENT_STATE_DIR and nothing about http: loopback only.
    monkeypatch.delenv("LOGAGENT_HTTP_HOST")
    unit_env = dict(v.split("=", 1) for v in unit_settings()["Service.Environment"])
    host = production_config(unit_env, monkeypatch)
    assert (parse_server_settings(host.http).host, parse_server_settings(host.http).port) == ("127.0.0.1", 2020)
    assert host.state_dir == "/var/lib/" + unit_settings()["Service.StateDirectory"][0]


def test_production_config_passes_logagent_check():
    """`logagent check` builds every component's settings: the config is valid for the code in this tree."""
    cfg = parse_config(load_yaml(PROD_CONFIG.read_text(), str(PROD_CONFIG)), str(PROD_CONFIG))
    missing = []
    for comp in (*cfg.inputs, *cfg.stages, *cfg.outputs):
        try:
            registry.component_class(comp)
        except ConfigError as e:
            missing.append(str(e))
    if missing:
        pytest.skip("component types not in this tree yet: " + "; ".join(missing))
    out = subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(PROD_CONFIG)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"# {PROD_CONFIG}: OK")


def test_probes_and_scrape_annotations_hit_endpoints_the_agent_serves(tmp_path, monkeypatch):
    c = daemonset_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    cfg = production_config(daemonset_env(pod_ip="127.0.0.1"), monkeypatch)
    http = parse_server_settings(cfg.http)
    assert ports[c["livenessProbe"]["httpGet"]["port"]] == http.port
    assert ports[c["readinessProbe"]["httpGet"]["port"]] == http.port
    annotations = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == http.port

    # A real agent with the production config's http section, on loopback and a port of the kernel's choosing.
    http_section = {**cfg.http.data, "address": "127.0.0.1", "port": 0}
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "a.log").write_text("one\n")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "http": http_section,
        "inputs": [{"type": "file", "name": "a", "paths": [str(log_dir / "*.log")]}],
        "outputs": [{"type": "file", "path": str(tmp_path / "out.jsonl")}],
    }))
    agent = Agent(config, tmp_path)
    try:
        base = agent_base_url(agent)
        wait_http_up(base)
        for probe in ("livenessProbe", "readinessProbe"):
            path = c[probe]["httpGet"]["path"]
            status, body = http_get(base + path)
            assert status == 200, (probe, path, status, body)
            assert orjson.loads(body)["status"] in ("ok", "ready")
        status, body = http_get(base + annotations["prometheus.io/path"])
        assert status == 200
        assert b"# TYPE logagent_input_records_total counter" in body
    finally:
        assert agent.stop() == 0


# -- capabilities ---------------------------------------------------------------------------------------------
def test_unit_and_daemonset_grant_exactly_the_documented_capabilities():
    unit = unit_settings()
    documented = set(privileges.REQUIRED_CAPABILITIES)
    assert set(" ".join(unit["Service.CapabilityBoundingSet"]).split()) == documented
    assert set(" ".join(unit["Service.AmbientCapabilities"]).split()) == documented
    add = daemonset_container()["securityContext"]["capabilities"]["add"]
    assert {"CAP_" + name for name in add} == documented
    for cap, why in privileges.REQUIRED_CAPABILITIES.items():
        assert re.fullmatch(r"CAP_[A-Z_]+", cap) and why


# -- systemd unit ---------------------------------------------------------------------------------------------
def test_unit_is_a_hardened_notify_service_with_watchdog_state_directory_and_reload():
    u = unit_settings()
    assert u["Service.Type"] == ["notify"]
    assert u["Service.WatchdogSec"] and u["Service.WatchdogSec"][0] not in ("0", "infinity")
    assert u["Service.StateDirectory"] == ["logagent"]
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
                       "DevicePolicy": "closed", "DeviceAllow": "/dev/kmsg r"}.items():
        assert u[f"Service.{key}"] == [value], key
    # ProtectKernelLogs=yes would hide /dev/kmsg from the kmsg input.
    assert u.get("Service.ProtectKernelLogs", ["no"]) == ["no"]
    start = shlex.split(u["Service.ExecStart"][0])
    assert start[1:] == ["run", "-c", "/etc/logagent/logagent.yaml"]
    reload = shlex.split(u["Service.ExecReload"][0])
    assert reload[0] == start[0] and reload[1] == "reload" and "$MAINPID" in reload
    assert u["Install.WantedBy"] == ["multi-user.target"]


def test_unit_reload_command_line_is_accepted_by_logagent_reload():
    import argparse

    from logagent import reload

    parser = argparse.ArgumentParser()
    reload.configure(parser)
    args = shlex.split(unit_settings()["Service.ExecReload"][0])[2:]
    parsed = parser.parse_args([a.replace("$MAINPID", "1234") for a in args])
    assert parsed.pid == 1234 and parsed.config == "/etc/logagent/logagent.yaml"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """The unit as installed, with ExecStart pointing at this machine's logagent (verify checks it exists)."""
    exe = shutil.which("logagent") or str(Path(sys.executable).with_name("logagent"))
    assert os.access(exe, os.X_OK), exe
    unit = tmp_path / "logagent.service"
    unit.write_text(UNIT.read_text().replace("/opt/logagent/bin/logagent", exe))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and only warns: any message about our unit is a mistake in it.
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "logagent.service" in line]
    assert out.returncode == 0 and problems == [], out.stdout + out.stderr


# -- Dockerfile -----------------------------------------------------------------------------------------------
def dockerignore_allows(path: str) -> bool:
    """.dockerignore semantics for our allow-list style: the last matching pattern wins, `!` re-includes."""
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("**/"))
               for p in prefixes):
            allowed = negate
    return allowed


def test_dockerfile_is_multi_stage_pinned_and_copies_only_what_exists_in_the_context():
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    stages = []
    for instr, rest in instructions:
        if instr == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append((image, words[2] if len(words) > 2 and words[1].upper() == "AS" else ""))
    assert len(stages) >= 2
    for image, _ in stages:
        name, _, tag = image.partition(":")
        assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), image
    copies = [rest.split() for instr, rest in instructions if instr == "COPY"]
    stage_names = {name for _, name in stages}
    for words in copies:
        from_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        sources = [w for w in words if not w.startswith("--")][:-1]
        if from_stage is not None:
            assert from_stage in stage_names
            continue
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert dockerignore_allows(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"
    # The wheel build needs every package directory pyproject maps.
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = {w.rstrip("/") for words in copies for w in words}
    for directory in pyproject["tool"]["setuptools"]["package-dir"].values():
        assert directory in copied, f"package dir {directory} is not copied into the build stage"
    assert pyproject["project"].get("readme", "README.md") in copied


def test_dockerfile_builds_systemd_python_and_runs_the_agent_on_the_configmap_path_as_non_root():
    instructions = dockerfile_instructions()
    runs = " ".join(rest for instr, rest in instructions if instr == "RUN")
    assert "libsystemd-dev" in runs and "libsystemd0" in runs
    assert "pip wheel" in runs and "[systemd" in runs
    entrypoint = json.loads(next(rest for instr, rest in instructions if instr == "ENTRYPOINT"))
    assert entrypoint == ["logagent", "run", "-c", config_mount_path()]
    assert entrypoint[3] == shlex.split(unit_settings()["Service.ExecStart"][0])[3]
    user = [rest for instr, rest in instructions if instr == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    # The image's own copy of the config sits where the ConfigMap is mounted, so `docker run` works too.
    assert f"COPY conf/logagent.yaml {config_mount_path()}" in [f"{i} {r}" for i, r in instructions]


def test_the_image_build_context_makes_a_wheel_with_every_module_of_the_tree(tmp_path):
    """What the Dockerfile's build stage does (`pip wheel .` on the COPYed files), run here on the same files:
    every module and data file of logagent/, inputs/ and outputs/ must land in the wheel, or the image lacks it."""
    import tomllib
    import zipfile

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    context = tmp_path / "context"
    for instr, rest in dockerfile_instructions():
        words = rest.split()
        if instr != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        for src in words[:-1]:
            source = REPO / src.rstrip("/")
            if not source.exists():
                continue  # reported by the test above; the wheel's contents are this test's question
            if source.is_dir():
                shutil.copytree(source, context / src.rstrip("/"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
            else:
                (context / src).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, context / src)
    readme = context / pyproject["project"].get("readme", "README.md")
    if not readme.exists():
        readme.write_text("logagent\n")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "--wheel-dir", str(tmp_path / "wheels"), str(context)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheels").glob("logagent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for package, directory in pyproject["tool"]["setuptools"]["package-dir"].items():
        for path in (REPO / directory).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                expected.add(package.replace(".", "/") + "/" + path.relative_to(REPO / directory).as_posix())
    # A nested package-dir entry (logagent.inputs -> inputs/) is also under logagent/ as a directory name only.
    expected = {n for n in expected if not any(n.startswith(f"logagent/{d}/") for d in ("inputs", "outputs"))
                or (REPO / n.removeprefix("logagent/")).exists()}
    missing = sorted(expected - names)
    assert missing == [], f"not in the wheel (add the packages to pyproject.toml): {missing}"
