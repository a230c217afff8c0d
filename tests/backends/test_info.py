import subprocess
import sys

from isnet_kernels import dispatch


def test_info_lists_every_backend_with_a_reason():
    out = subprocess.run([sys.executable, "-m", "isnet_kernels.info"], capture_output=True, text=True, check=True,
                         env={"ISNET_KERNELS_BACKEND": "reference", "PATH": ""}).stdout
    assert "torch 2." in out
    for name, (ok, _why) in dispatch.backend_status().items():
        line = next(line for line in out.splitlines() if line.startswith("  " + name + " "))
        assert ("unavailable" not in line) == ok or name == "triton"  # triton depends on TRITON_INTERPRET
        assert ":" in line and len(line.split(":", 1)[1].strip()) > 0
    assert "auto (cpu tensors, $ISNET_KERNELS_BACKEND=reference): reference" in out
