"""examples/kubernetes: valid Kubernetes, a config keysetd loads, and the sidecar pattern intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keysetd.config import load_config
from tests.conftest import KEYSETD

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "kubernetes"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
#: Native sidecars (restartPolicy on init containers) are GA from 1.33 (beta, on, from 1.29).
KUBERNETES_VERSION = "1.33.0"
PORT = 9464


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str) -> dict[str, Any]:
    found = [doc for path in MANIFESTS for doc in documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["initContainers"] if c["name"] == "keysetd"]
    found: dict[str, Any] = container
    return found


def test_there_are_manifests() -> None:
    names = {path.name for path in MANIFESTS}
    assert {"deployment.yaml", "configmap.yaml", "secret.example.yaml"} <= names


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(manifest: Path) -> None:
    """kubernetes-validate --strict: the schemas ship with the package, no cluster or network."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # An unknown kind or apiVersion is only a WARN with exit 0: require a pass for each document.
    passed = [
        line for line in output.splitlines() if line.startswith("INFO") and " passed " in line
    ]
    assert len(passed) == len(documents(manifest)), output
    assert "WARN" not in output


def test_configmap_config_loads(tmp_path: Path) -> None:
    toml = resource("ConfigMap")["data"]["keysetd.toml"]
    path = tmp_path / "keysetd.toml"
    path.write_text(toml)
    config = load_config(path, environ={})
    settings = config.settings
    assert settings.strict
    assert settings.server is not None
    assert settings.server.listen == f"0.0.0.0:{PORT}"
    assert config.policy.max_staleness is not None
    assert config.source.type == "file"
    secret_mount = mount_path(sidecar(), volume_of_secret("keysetd-source"))
    assert getattr(config.source, "path", None) == Path(secret_mount) / "keyset.json"
    assert "keyset.json" in resource("Secret")["stringData"]
    outputs = {cfg.type: cfg.path for _cls, cfg in config.outputs}
    assert set(outputs) == {"jwks", "keyset"}
    assert all(p.parent == Path("/run/keysetd") for p in outputs.values())
    ((_cls, notifier),) = config.notifiers
    assert notifier.type == "signal"
    assert getattr(notifier, "pidfile", None) == Path("/run/keysetd/app.pid")
    assert settings.state_dir == Path(mount_path(sidecar(), "keysetd-state"))


def test_example_secret_is_a_valid_placeholder(tmp_path: Path) -> None:
    keyset = tmp_path / "keyset.json"
    keyset.write_text(resource("Secret")["stringData"]["keyset.json"])
    done = subprocess.run(
        [*KEYSETD, "validate", str(keyset)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "EXAMPLE-DO-NOT-USE" in done.stdout


def volume_of_secret(name: str) -> str:
    (volume,) = [v for v in pod_spec()["volumes"] if v.get("secret", {}).get("secretName") == name]
    return str(volume["name"])


def mount_path(container: dict[str, Any], volume: str) -> str:
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume]
    return str(mount["mountPath"])


def test_keysetd_is_a_native_sidecar_with_probes() -> None:
    container = sidecar()
    assert container["restartPolicy"] == "Always"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["startupProbe"]["path"] == "/readyz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == PORT
    assert container["args"] == ["run", "--config", "/etc/keysetd/keysetd.toml"]


def test_outputs_are_shared_in_memory() -> None:
    spec = pod_spec()
    volumes = {v["name"]: v for v in spec["volumes"]}
    shared = {m["name"] for m in sidecar()["volumeMounts"] if m["mountPath"] == "/run/keysetd"}
    (name,) = shared
    assert volumes[name]["emptyDir"]["medium"] == "Memory"
    for container in spec["containers"]:
        assert mount_path(container, name) == "/run/keysetd"
    assert spec["shareProcessNamespace"] is True


def test_security_context_is_locked_down() -> None:
    spec = pod_spec()
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    for container in [*spec["initContainers"], *spec["containers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in context["capabilities"], container["name"]
        assert context.get("runAsUser", pod["runAsUser"]) != 0, container["name"]


def test_dockerfile_runs_keysetd_as_10001() -> None:
    lines = (EXAMPLES / "Dockerfile").read_text().splitlines()
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM python:3.11-slim"]
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["keysetd"]' in lines
    assert 'CMD ["run", "--config", "/etc/keysetd/keysetd.toml"]' in lines


def test_pods_get_no_service_links_and_keysetd_ignores_them(tmp_path: Path) -> None:
    """A Service named keysetd injects KEYSETD_* variables into every pod of the namespace."""
    assert pod_spec()["enableServiceLinks"] is False
    path = tmp_path / "keysetd.toml"
    path.write_text(resource("ConfigMap")["data"]["keysetd.toml"])
    links = {
        "KEYSETD_SERVICE_HOST": "10.96.0.12",
        "KEYSETD_SERVICE_PORT": str(PORT),
        "KEYSETD_SERVICE_PORT_KEYSETD_HTTP": str(PORT),
        "KEYSETD_PORT": f"tcp://10.96.0.12:{PORT}",
        f"KEYSETD_PORT_{PORT}_TCP": f"tcp://10.96.0.12:{PORT}",
        f"KEYSETD_PORT_{PORT}_TCP_PROTO": "tcp",
        f"KEYSETD_PORT_{PORT}_TCP_PORT": str(PORT),
        f"KEYSETD_PORT_{PORT}_TCP_ADDR": "10.96.0.12",
    }
    assert load_config(path, environ=links).settings == load_config(path, environ={}).settings


FLEET = EXAMPLES / "fleet"
FLEET_MANIFESTS = sorted(FLEET.glob("*.yaml"))


@pytest.mark.parametrize("manifest", FLEET_MANIFESTS, ids=lambda p: f"fleet/{p.name}")
def test_fleet_manifest_is_valid_kubernetes(manifest: Path) -> None:
    test_manifest_is_valid_kubernetes(manifest)


def test_fleet_example_config_loads_and_mounts_its_etcd_certificates(tmp_path: Path) -> None:
    (configmap,) = documents(FLEET / "configmap.yaml")
    (deployment,) = documents(FLEET / "deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    (keysetd,) = [c for c in spec["initContainers"] if c["name"] == "keysetd"]
    mounted = mount_path(keysetd, "keysetd-etcd")
    toml = configmap["data"]["keysetd.toml"]
    # The certificate paths as the pod sees them, moved under tmp_path to load here.
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("placeholder")
    path = tmp_path / "keysetd.toml"
    path.write_text(toml.replace(mounted, str(tmp_path)))
    fleet = load_config(path, environ={}).settings.fleet
    assert fleet is not None
    assert all(url.startswith("https://") for url in fleet.endpoints)
    assert fleet.ca_file == tmp_path / "ca.crt" and fleet.key_file == tmp_path / "tls.key"
    assert deployment["spec"]["replicas"] >= 2
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["keysetd-config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert volumes["keysetd-etcd"]["secret"]["secretName"] == "keysetd-etcd-client"
