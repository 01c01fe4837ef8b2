"""Security: planted credentials never reach an artefact of a run; recipes and checkpoints
never execute code; no subprocess is started from a shell string."""

from __future__ import annotations

import ast
import io
import json
import pickle
from pathlib import Path

import pytest

from tests.test_engine import DEMO, ROOT, read_rows, vqf
from tests.test_faults import LEAN, write_table

KEY_ID = "VQFLEAKID7f3a9c2e"
KEY_SECRET = "VQFLEAKSECRET0d8e2b41"
ODPS_ID = "VQFLEAKODPSID5c1d"
ODPS_KEY = "VQFLEAKODPSKEY9e4f"
SECRETS = (KEY_ID, KEY_SECRET, ODPS_ID, ODPS_KEY)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in SECRETS if s.encode() in data]


def test_planted_credentials_appear_in_no_artefact(
    tmp_path, video_factory, oss_server, monkeypatch
):
    """OSS keys (one from the environment, one from the recipe) and ODPS keys are planted; the
    server answers one object with 403, echoing the key id as real OSS does; oss2 logs at
    DEBUG. Logs, output rows, the resolved config and every file the run left are searched."""
    good = video_factory(codec="h264", seconds=1)
    oss_server.put("bucket", "ok.mp4", good.read_bytes())
    oss_server.put("bucket", "denied.mp4", good.read_bytes())
    oss_server.fail_next(50, status=403, key="denied.mp4")
    rows = [
        {"video_id": k, "oss_bucket": "bucket", "video_path": f"{k}.mp4"} for k in ("ok", "denied")
    ]
    table = write_table(rows, tmp_path / "in.jsonl")
    out = tmp_path / "out"
    for name, value in (("OSS_ENDPOINT", oss_server.endpoint), ("OSS_ACCESS_KEY_ID", KEY_ID),
                        ("OSS_REGION", "cn-test"),
                        ("ODPS_ACCESS_ID", ODPS_ID), ("ODPS_ACCESS_KEY", ODPS_KEY),
                        ("ODPS_ENDPOINT", oss_server.endpoint + "/api"), ("VQF_LOG", "DEBUG")):  # fmt: skip
        monkeypatch.setenv(name, value)
    result = vqf(
        "--log-level", "DEBUG", "run", str(DEMO), "--tables", str(table), "--outputs", str(out),
        *LEAN, "--set", f"storage.oss.access_key_secret={KEY_SECRET}",
        "--set", f"storage.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    got = {r["video_id"]: r["result_info"] for r in read_rows(out)}
    assert got["ok"]["succeed"] == "true"
    assert got["denied"]["error"]["type"] == "download_failed"
    assert "***" in got["denied"]["error"]["message"]  # the echoed key id was there, masked
    assert "Authorization" in result.stderr or "oss2" in result.stderr  # DEBUG logs were on
    assert (out / "resolved_config.yaml").exists()
    assert not leaks(result.stdout + result.stderr)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not leaks(path.read_bytes()), path

    odps = vqf("run", str(DEMO), "--tables", "odps://proj/videos", "--outputs", str(tmp_path / "o2"),
               *LEAN, cwd=tmp_path)  # fmt: skip
    assert odps.returncode != 0 and odps.stderr.strip()  # it failed, and said something
    assert not leaks(odps.stdout + odps.stderr)


def test_the_dashboard_shows_no_credentials(tmp_path, video_factory, oss_server, monkeypatch):
    from rich.console import Console

    from vqf.config import load_recipe
    from vqf.engine.rank import Rank
    from vqf.ops.dashboard import render, summary_table

    oss_server.put("bucket", "denied.mp4", video_factory(codec="h264", seconds=1).read_bytes())
    oss_server.fail_next(50, status=403, key="denied.mp4")
    table = write_table([{"video_id": "denied", "oss_bucket": "bucket", "video_path": "denied.mp4"}],
                        tmp_path / "in.jsonl")  # fmt: skip
    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_REGION", "cn-test")
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", KEY_SECRET)
    recipe = load_recipe(
        DEMO, overrides=[f"tables={table}", f"outputs={tmp_path / 'out'}",
                         *[s for s in LEAN if s != "--set"]],
    )  # fmt: skip
    snap = Rank(recipe, rank=0, world_size=1, device="cpu").run()
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(render([snap]))
    console.print(summary_table([snap]))
    text = console.export_text()
    assert "download_failed" in text  # the failure is on the dashboard
    assert not leaks(text) and not leaks(json.dumps(snap, default=str))


def test_recipes_are_loaded_with_safe_yaml(tmp_path):
    from vqf.config import load_recipe
    from vqf.errors import ConfigError

    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError):
        load_recipe(recipe)
    result = vqf("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 2 and not marker.exists()


class _Payload:
    """Unpickling this creates `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_never_unpickled(tmp_path):
    from vqf.errors import ConfigError
    from vqf.models.backbone import preset_config, pretrained_backbone_model

    marker = tmp_path / "pwned"
    folder = tmp_path / "backbone"
    folder.mkdir()
    preset_config("tiny").save_pretrained(folder)  # a valid config.json
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ConfigError):
        pretrained_backbone_model(folder, crop_size=None, device="cpu", dtype=None)
    # the same pickle under the safetensors name is refused as a bad file, not executed
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(Exception):  # noqa: B017  safetensors' own error type varies by version
        pretrained_backbone_model(folder, crop_size=None, device="cpu", dtype=None)
    assert not marker.exists()


UNSAFE_CALLS = {
    ("os", "system"), ("os", "popen"), ("yaml", "load"), ("yaml", "unsafe_load"),
    ("pickle", "load"), ("pickle", "loads"), ("torch", "load"),
}  # fmt: skip


def test_no_code_path_runs_a_shell_or_unpickles():
    """vqf's own source: no shell strings, no unsafe YAML, no pickle, torch.load only with
    weights_only=True (head state dicts), transformers never trusts remote code."""
    found = []
    for path in sorted((ROOT / "vqf").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                weights_only = any(
                    kw.arg == "weights_only"
                    and isinstance(kw.value, ast.Constant)
                    and kw.value.value is True
                    for kw in node.keywords
                )
                call = (func.value.id, func.attr)
                if call in UNSAFE_CALLS and not (call == ("torch", "load") and weights_only):
                    found.append(f"{path.name}:{node.lineno} {func.value.id}.{func.attr}")
            for kw in node.keywords:
                value = kw.value
                if kw.arg in ("shell", "trust_remote_code") and not (
                    isinstance(value, ast.Constant) and value.value is False
                ):
                    found.append(f"{path.name}:{node.lineno} {kw.arg}=")
    assert not found, found
