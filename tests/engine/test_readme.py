"""The README stays true: its first commands, and its third-party plugin example works as written."""

from __future__ import annotations

import re
import subprocess
import sys

from support import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_opens_with_setup_and_test_commands_and_ci_runs_the_same():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    setup, tests = blocks[0].strip(), blocks[1].strip()
    assert "pip install torch==2.13.0" in setup and "mercore run recipes/demo_synthetic.yaml" in setup
    assert (ROOT / "recipes" / "demo_synthetic.yaml").exists()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f"CI must run the README's test command {tests!r}"


def test_third_party_plugin_example_from_readme_works(tmp_path, subprocess_env, plugin_site):
    section = README.split("### Writing a third-party plugin package", 1)[1]
    code = re.search(r"```python\n(# mercore_myfusion.py\n.*?)```", section, re.S)[1]
    site = plugin_site(tmp_path, {"mercore_myfusion": code}, dist="mercore-myfusion", version="0.1.0")
    env = dict(subprocess_env, PYTHONPATH=f"{site}:{subprocess_env['PYTHONPATH']}")
    listed = subprocess.run([sys.executable, "-m", "mercore", "plugins"], env=env, capture_output=True, text=True)
    assert "myfusion  [mercore-myfusion 0.1.0]" in listed.stdout and "fusion 1" in listed.stdout
    out = subprocess.run([sys.executable, "-m", "mercore", "validate", str(ROOT / "recipes" / "demo_synthetic.yaml"),
                          "model.fusion.type=max", "~model.moe", "--build"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "dropped its old keys: anchor, heads" in out.stderr and "loss terms" in out.stdout


def test_router_plugin_example_from_readme_works(tmp_path, subprocess_env, plugin_site):
    section = README.split("### Writing a third-party plugin package", 1)[1]
    code = re.search(r"```python\n(# mercore_myrouter.py\n.*?)```", section, re.S)[1]
    site = plugin_site(tmp_path, {"mercore_myrouter": code}, dist="mercore-myrouter", version="0.1.0")
    env = dict(subprocess_env, PYTHONPATH=f"{site}:{subprocess_env['PYTHONPATH']}")
    shown = subprocess.run([sys.executable, "-m", "mercore", "show", "router", "top1"], env=env, capture_output=True,
                           text=True)
    assert "router top1  (plugin myrouter)" in shown.stdout, shown.stderr
    assert "  dim: int" in shown.stdout and "  num_experts: int" in shown.stdout
    assert "returns: Routing (defined in mercore.nn.moe)" in shown.stdout
    out = subprocess.run([sys.executable, "-m", "mercore", "validate", str(ROOT / "recipes" / "demo_synthetic.yaml"),
                          "model.moe.router.type=top1", "--build"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "dropped its old keys: tau" in out.stderr and "loss terms" in out.stdout
