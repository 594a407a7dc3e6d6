"""The pinned plugin API: ``keysetd.plugin.__all__`` is exactly this list, every name in it
resolves, nothing inside keysetd imports it, and the plugins shipped here import nothing
else of keysetd (but the verifier)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import keysetd.plugin

ROOT = Path(__file__).resolve().parent.parent

#: Changing this list is changing the public API: add freely, remove only with a major version.
PINNED = {
    "ALGORITHMS",
    "After",
    "Before",
    "ConfigError",
    "Duration",
    "HttpCancelled",
    "HttpConnectError",
    "HttpFailure",
    "HttpRequest",
    "HttpResponse",
    "HttpTimeout",
    "HttpTlsError",
    "HttpTooLarge",
    "HttpTransport",
    "InvalidKeyset",
    "Key",
    "KeyProvider",
    "KeyProviderConfig",
    "Keyset",
    "KeysetdError",
    "NatsPermissions",
    "NatsSubjects",
    "Notifier",
    "NotifierConfig",
    "NotifyError",
    "NotifyEvent",
    "Output",
    "OutputConfig",
    "OutputError",
    "PluginConfig",
    "PluginError",
    "PositiveDuration",
    "Problem",
    "Role",
    "RotatableSource",
    "Secret",
    "Snapshot",
    "Source",
    "SourceConfig",
    "SealError",
    "SourceError",
    "SourceFormat",
    "Table",
    "TableError",
    "WrappedKey",
    "WritableSource",
    "b64u_decode",
    "b64u_encode",
    "canonical_json",
    "check_http_url",
    "configure_logging",
    "event",
    "http_send",
    "key_from_public",
    "matches",
    "nkey",
    "non_empty",
    "parse_duration",
    "positive",
    "read_limited",
    "safe_url",
    "sd_notify",
}

#: What a plugin may import from keysetd.
PUBLIC_MODULES = {"keysetd.plugin", "keysetd.verifier"}


def test_the_exported_members_are_pinned() -> None:
    exported = keysetd.plugin.__all__
    assert len(exported) == len(set(exported)), "a name exported twice"
    assert set(exported) == PINNED


def test_every_exported_name_resolves() -> None:
    for name in keysetd.plugin.__all__:
        assert getattr(keysetd.plugin, name) is not None, name
    assert keysetd.plugin.http_send.__module__ == "keysetd.httpclient"
    assert keysetd.plugin.nkey.__name__ == "keysetd.formats.nkey"


def test_nothing_inside_keysetd_imports_the_facade() -> None:
    """Internal modules import ``keysetd.extension``; the facade re-exports every layer."""
    package = ROOT / "keysetd"
    importers = {
        str(path.relative_to(ROOT))
        for path in package.rglob("*.py")
        if path.name != "plugin.py" and "keysetd.plugin" in _keysetd_imports(path)
    }
    assert importers == set()


def test_the_daemon_does_not_load_the_facade() -> None:
    code = (
        "import sys, keysetd.config, keysetd.pipeline, keysetd.daemon; "
        "print('keysetd.plugin' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


def _keysetd_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "keysetd":
                found |= {f"keysetd.{alias.name}" for alias in node.names}
            elif node.module.startswith("keysetd."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "keysetd"}
    return found


def test_the_shipped_plugins_use_only_the_public_api() -> None:
    sources = [p for p in (ROOT / "plugins").rglob("*.py") if "tests" not in p.parts]
    assert sources
    private = {
        str(path.relative_to(ROOT)): sorted(_keysetd_imports(path) - PUBLIC_MODULES)
        for path in sources
    }
    assert {path: mods for path, mods in private.items() if mods} == {}
