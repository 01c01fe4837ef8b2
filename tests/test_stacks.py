"""The two locked stacks (one CUDA major each), how setup.sh picks one, and what doctor checks."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest

from vqf.ops import dashboard, doctor

ROOT = Path(__file__).resolve().parents[1]
STACKS = {"cu12": ("2.10.0", "nvidia-dali-cuda120"), "cu13": ("2.15.0", "nvidia-dali-cuda130")}
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|torch$|torchvision$|triton$)")


def lock(stack: str) -> dict[str, str]:
    lines = (ROOT / "launch" / f"constraints-{stack}.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {name.lower(): version for name, version in pins}


@pytest.mark.parametrize("stack", STACKS)
def test_each_lock_is_one_cuda_major(stack):
    pins = lock(stack)
    torch_version, dali = STACKS[stack]
    major = stack[2:]
    other = "12" if major == "13" else "13"
    assert pins["torch"] == torch_version and pins[dali] == "2.4.0"
    assert [n for n in pins if n.startswith("nvidia-dali")] == [dali]
    assert "nvidia-ml-py" in pins and "pytest" in pins
    # no package built for the other CUDA major
    assert not [n for n in pins if n.endswith((f"-cu{other}", f"cuda{other}0"))]


def test_the_two_locks_agree_outside_cuda():
    cu12, cu13 = lock("cu12"), lock("cu13")
    shared = {n for n in set(cu12) & set(cu13) if not CUDA_ONLY.match(n)}
    assert len(shared) > 50
    assert {n: (cu12[n], cu13[n]) for n in shared if cu12[n] != cu13[n]} == {}


# -- setup.sh's choice -------------------------------------------------------------------------
def _setup(tmp_path, *, smi: str | None, cuda: str | None = None, stack: str = "cu13"):
    """setup.sh with a fake nvidia-smi (or none) and a venv stamped as ready for `stack`,
    so it says which stack it picked and stops before installing anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(
            f"#!/bin/sh\necho '| NVIDIA-SMI 580.65   Driver Version: 580.65   {smi} |'\n"
        )
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes()
        + (ROOT / "launch" / f"constraints-{stack}.txt").read_bytes()
    ).hexdigest()
    (venv / ".vqf-installed").write_text(f"{stack} {digest}\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VQF_VENV": str(venv), "HOME": str(tmp_path)}
    if cuda is not None:
        env["VQF_CUDA"] = cuda
    return subprocess.run(
        ["bash", str(ROOT / "launch" / "setup.sh")], env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "smi, cuda, stack, why",
    [
        (
            None,
            None,
            "cu13",
            "no NVIDIA driver answers nvidia-smi here: the default, which CI tests",
        ),
        ("CUDA Version: 13.0", None, "cu13", "the driver runs CUDA 13"),
        ("CUDA Version: 12.4", None, "cu12", "the driver runs CUDA 12 only"),
        ("CUDA Version: 13.0", "12", "cu12", "VQF_CUDA=12"),
        (None, "13", "cu13", "VQF_CUDA=13"),
    ],
)
def test_setup_picks_the_stack_from_the_driver_or_vqf_cuda(tmp_path, smi, cuda, stack, why):
    done = _setup(tmp_path, smi=smi, cuda=cuda, stack=stack)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"vqf: CUDA {stack[2:]} stack ({stack}, launch/constraints-{stack}.txt): {why}"
    ]


def test_setup_refuses_other_cuda_majors(tmp_path):
    bad = _setup(tmp_path, smi=None, cuda="11")
    assert bad.returncode == 2 and "VQF_CUDA=11 is not allowed; use 12 or 13" in bad.stderr
    old = _setup(tmp_path, smi="CUDA Version: 11.8")
    assert old.returncode == 2 and "runs CUDA 11; vqf's stacks need CUDA 12 or 13" in old.stderr


# -- doctor --------------------------------------------------------------------------------------
def test_doctor_fails_when_torch_and_dali_differ_in_cuda_major():
    ok = doctor.stack_check(13, {"nvidia-dali-cuda130": 13})
    assert ok.startswith("[ok  ] CUDA majors: torch for CUDA 13, DALI for CUDA 13")
    mixed = doctor.stack_check(13, {"nvidia-dali-cuda120": 12})
    assert mixed.startswith("[FAIL] CUDA majors: torch for CUDA 13, DALI for CUDA 12")
    assert "two CUDA runtimes in one process" in mixed and "VQF_CUDA=12|13" in mixed
    both = doctor.stack_check(12, {"nvidia-dali-cuda120": 12, "nvidia-dali-cuda130": 13})
    assert both.startswith("[FAIL]")


def test_the_installed_stack_is_one_cuda_major():
    """What `vqf doctor` says of this venv: a fresh launch/setup.sh install passes."""
    line = doctor.stack_check(doctor.torch_cuda_major(), doctor.dali_cuda_majors())
    assert line.startswith("[ok  ] CUDA majors"), line


def _fake_nvml(monkeypatch, *, cuda: int, handles: dict | None = None):
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "575.57.08",
        nvmlSystemGetCudaDriverVersion=lambda: cuda,
        nvmlDeviceGetCount=lambda: 8,
        nvmlDeviceGetHandleByIndex=lambda i: ("index", i),
        nvmlDeviceGetHandleByUUID=lambda u: ("uuid", u),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=handles[h][0]),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=handles[h][1] * 2**30, total=80 * 2**30),
        nvmlDeviceGetDecoderUtilization=lambda h: (handles[h][2], 167000),
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(dashboard, "_nvml", None)  # initialise again, with the fake
    return nvml


def test_doctor_fails_a_driver_older_than_torchs_cuda(monkeypatch):
    _fake_nvml(monkeypatch, cuda=12090)
    line = doctor.driver_check(13)
    assert line.startswith("[FAIL] NVIDIA driver: 575.57.08, runs CUDA up to 12.9")
    assert "VQF_CUDA=12 bash launch/setup.sh" in line
    assert doctor.driver_check(12).startswith("[ok  ] NVIDIA driver")
    assert doctor.nvml_check().startswith("[ok  ] GPU readings: NVML sees 8 GPU(s)")


def test_doctor_loads_libnvcuvid_before_calling_nvdec_possible(monkeypatch):
    monkeypatch.setattr(
        doctor, "load_nvcuvid", lambda: "libnvcuvid.so.1: cannot open shared object"
    )
    lines = doctor.nvdec_checks(dali=True, cuda=True)
    assert lines[0].startswith("[MISS] libnvcuvid: libnvcuvid.so.1 does not load")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in lines[0]
    assert lines[1].startswith("[MISS] NVDEC decode: not tried here")
    # With the library there, a GPU and DALI, one frame is really decoded; a failure fails.
    monkeypatch.setattr(doctor, "load_nvcuvid", lambda: None)

    def broken(index):
        raise RuntimeError("CUDA_ERROR_NO_DEVICE")

    monkeypatch.setattr(doctor, "nvdec_one_frame", broken)
    lines = doctor.nvdec_checks(dali=True, cuda=True)
    assert lines[0].startswith("[ok  ] libnvcuvid") and lines[1].startswith("[FAIL] NVDEC decode")


def test_doctor_exits_1_on_a_failed_check(monkeypatch, capsys):
    from vqf.cli import main

    monkeypatch.setattr(doctor, "report", lambda recipe=None: "[FAIL] CUDA majors: mixed")
    assert main(["doctor"]) == 1
    monkeypatch.setattr(doctor, "report", lambda recipe=None: "[MISS] CUDA: device: none")
    assert main(["doctor"]) == 0
    assert "[MISS] CUDA" in capsys.readouterr().out


def test_doctor_on_this_machine_names_the_stack_and_nvdec():
    text = doctor.report()
    print(text)
    for name in ("CUDA majors", "GPU readings", "libnvcuvid", "NVDEC decode"):
        assert f"] {name}: " in text


def test_doctor_says_how_oss_requests_are_signed(monkeypatch):
    from vqf.config import OssConfig, StorageConfig

    monkeypatch.delenv("OSS_REGION", raising=False)
    monkeypatch.delenv("OSS_ENDPOINT", raising=False)

    def line(**oss):
        return doctor.oss_signing_check(StorageConfig(oss=OssConfig(**oss)))

    endpoint = "https://oss-cn-beijing.aliyuncs.com"
    assert line(endpoint=endpoint) == (
        f"[ok  ] OSS signing: V4, region cn-beijing (from the endpoint {endpoint})"
    )
    assert line(endpoint="http://10.0.0.1", region="cn-test").endswith("(from storage.oss.region)")
    assert line(endpoint="http://10.0.0.1").startswith("[MISS] OSS signing: V4, but no region")
    assert line(signature="v1") == "[ok  ] OSS signing: V1 (storage.oss.signature: v1)"


@pytest.mark.gpu
def test_doctor_decodes_one_frame_on_nvdec():
    assert doctor.nvdec_one_frame(0).startswith("decoded 1 frame")


# -- GPU readings per rank's device ----------------------------------------------------------
def test_gpu_readings_follow_cuda_visible_devices(monkeypatch):
    handles = {
        ("index", 3): (91, 41.5, 63),
        ("uuid", "GPU-4a5b"): (12, 3.0, 0),
        ("index", 0): (1, 1, 1),
    }
    _fake_nvml(monkeypatch, cuda=13000, handles=handles)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert dashboard.gpu_reading("cuda:1") == {
        "util": 91.0,
        "mem_used_gb": 41.5,
        "mem_total_gb": 80.0,
        "nvdec": 63.0,
    }
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-4a5b")
    assert dashboard.gpu_reading("cuda:0")["util"] == 12.0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert dashboard.gpu_reading("cuda:0")["nvdec"] == 1.0
    assert dashboard.gpu_reading("cpu") is None


def test_nvidia_ml_py_is_a_dependency_and_dali_comes_with_the_stack():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "nvidia-ml-py" in project["dependencies"]
    assert not [d for d in project["dependencies"] if d.startswith("nvidia-dali")]
    assert project["optional-dependencies"]["cu12"] == ["nvidia-dali-cuda120"]
    assert project["optional-dependencies"]["cu13"] == ["nvidia-dali-cuda130"]
    import pynvml  # noqa: F401  # installed with vqf
