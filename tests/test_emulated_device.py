"""The emulated arm64 device: an aarch64 Debian under qemu-user, reached over ssh like a real Pi.
The session's one device (conftest's emulated_device) serves every test but the teardown one."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_emulator

emu = load_emulator()


def test_rootfs_key_ignores_order_and_tracks_packages():
    assert emu.rootfs_key(["numpy", "onnxruntime"]) == emu.rootfs_key(["onnxruntime", "numpy"])
    assert emu.rootfs_key(["numpy"]) != emu.rootfs_key(["numpy", "onnxruntime"])


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LITELM_EDGE_CACHE", str(tmp_path))
    assert emu.cache_root() == tmp_path / "emulated-arm64"


def test_sshd_config_is_key_only_and_accepts_no_env():
    cfg = emu.SSHD_CONFIG.format(port=2222)
    assert "PasswordAuthentication no" in cfg and "ListenAddress 127.0.0.1" in cfg
    assert "AcceptEnv" not in cfg


@pytest.fixture
def device(emulated_device):
    return emulated_device


def ssh(dev, command, **kw):
    """The system ssh client, exactly as a user (or remote.py) would call it."""
    cmd = ["ssh", "-i", str(dev.key_path), "-o", f"UserKnownHostsFile={dev.known_hosts_path}",
           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(dev.port),
           f"{dev.user}@{dev.host}", command]
    return subprocess.run(cmd, capture_output=True, timeout=300, **kw)


@pytest.mark.slow
def test_device_is_aarch64_over_ssh(device):
    p = ssh(device, "uname -m", text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "aarch64"


@pytest.mark.slow
def test_numpy_imports_on_device(device):
    run = "import numpy, platform; print(platform.machine(), numpy.__version__)"
    p = ssh(device, f"python3 -c '{run}'", text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "aarch64"


@pytest.mark.slow
def test_onnxruntime_runs_tiny_model_on_device(device):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    assert ssh(device, "cat > /tmp/add.onnx", input=model.SerializeToString()).returncode == 0
    run = ("import numpy as np, onnxruntime as ort; s = ort.InferenceSession('/tmp/add.onnx');"
           "print(s.run(None, {'x': np.ones((2, 3), np.float32)})[0].sum())")
    p = ssh(device, f'python3 -c "{run}"', text=True)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.strip()) == 12.0


# A one-op .tflite (y = a + b, shapes (2, 3)) built on the device with LiteRT's own schema module,
# so the host needs neither tensorflow nor flatbuffers.
LITERT_ADD = """
import flatbuffers, numpy as np
from ai_edge_litert import schema_py_generated as s
from ai_edge_litert.interpreter import Interpreter
def tensor(name):
    t = s.TensorT(); t.name, t.shape, t.type, t.buffer = name, [2, 3], s.TensorType.FLOAT32, 0
    return t
code = s.OperatorCodeT(); code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
op = s.OperatorT(); op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
g = s.SubGraphT(); g.tensors, g.inputs, g.outputs = [tensor(n) for n in 'aby'], [0, 1], [2]
g.operators = [op]
m = s.ModelT(); m.version, m.buffers, m.operatorCodes, m.subgraphs = 3, [s.BufferT()], [code], [g]
b = flatbuffers.Builder(1024); b.Finish(m.Pack(b), file_identifier=b"TFL3")
it = Interpreter(model_content=bytes(b.Output())); it.allocate_tensors()
for d in it.get_input_details(): it.set_tensor(d["index"], np.ones((2, 3), np.float32))
it.invoke(); print(it.get_tensor(it.get_output_details()[0]["index"]).sum())
"""


@pytest.mark.slow
def test_litert_runs_tiny_model_on_device(device):
    p = ssh(device, "python3 -", input=LITERT_ADD, text=True)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.strip()) == 12.0


@pytest.mark.slow
def test_runtime_missing_on_the_device_is_one_line(device, x86_fp32, tmp_path, monkeypatch):
    """`bench --remote` to a device without onnxruntime (its package moved away for this test,
    then put back): exit 3 and the one line that says what to install there."""
    site = f"/{emu.SITE_DIR}"
    hide = ssh(device, f"mv {site}/onnxruntime {site}/onnxruntime.hidden", text=True)
    assert hide.returncode == 0, hide.stderr
    try:
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "known_hosts").write_text(device.host_key_line + "\n")
        (home / ".ssh" / "config").write_text(f"Host dev\n  HostName {device.host}\n  Port {device.port}\n"
                                              f"  User {device.user}\n  IdentityFile {device.key_path}\n")
        monkeypatch.setenv("HOME", str(home))
        p = subprocess.run([sys.executable, "-m", "litelm_edge.cli", "bench", "--remote", "dev",
                            str(x86_fp32), "--prompt-len", "16", "--gen-len", "4", "--report-dir",
                            str(tmp_path / "rep")], capture_output=True, text=True, timeout=600)
    finally:
        assert ssh(device, f"mv {site}/onnxruntime.hidden {site}/onnxruntime").returncode == 0
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 3 and last.startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    assert "onnxruntime is not installed: python3 -m pip install onnxruntime numpy (on the device)" in last


@pytest.mark.slow
def test_no_mounts_or_processes_left_after_an_error(emulated_rootfs):
    with pytest.raises(ZeroDivisionError):
        with emu.start_device(emulated_rootfs) as dev:
            root = str(dev.root)
            ssh(dev, "sleep 600 < /dev/null > /dev/null 2>&1 &")  # a session that outlives ssh
            raise ZeroDivisionError  # an error inside the context
    assert root not in Path("/proc/self/mounts").read_text()
    assert not Path(root).exists()
