"""A third-party plugin needs `mercore` alone: the README's examples, installed as a distribution with entry
points, train in a recipe; and no first-party plugin imports another."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

from support import ROOT
README = (ROOT / "README.md").read_text()
FIRST_PARTY = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "plugin.py").exists())


def readme_example(module: str) -> str:
    section = README.split("### Writing a third-party plugin package", 1)[1]
    return re.search(rf"```python\n(# {module}.py\n.*?)```", section, re.S)[1]


def imported_roots(source: str) -> set[str]:
    """Top-level packages a module imports (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_readme_plugins_import_only_mercore_and_its_dependencies():
    for module in ("mercore_myfusion", "mercore_myrouter"):
        assert imported_roots(readme_example(module)) <= {"mercore", "torch", "attrs"}, module


def test_no_first_party_plugin_imports_another():
    assert {"mercore_summer", "mercore_baselines", "mercore_core", "mercore_data"} <= set(FIRST_PARTY)
    for package in FIRST_PARTY:
        for path in sorted((ROOT / "plugins" / package).rglob("*.py")):
            others = imported_roots(path.read_text()) & set(FIRST_PARTY) - {package}
            assert not others, f"{path.relative_to(ROOT)} imports {sorted(others)}; import the contract from mercore"


def test_third_party_plugin_depending_only_on_mercore_runs_in_a_recipe(tmp_path, subprocess_env, plugin_site):
    site = plugin_site(tmp_path, {"mercore_myfusion": readme_example("mercore_myfusion"),
                                  "mercore_myrouter": readme_example("mercore_myrouter")},
                       dist="mercore-mycomponents", version="0.2.0")
    env = dict(subprocess_env, PYTHONPATH=f"{site}:{subprocess_env['PYTHONPATH']}")
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "mercore", "run", str(ROOT / "recipes" / "demo_synthetic.yaml"),
         "data.num_dialogues={train: 6, dev: 3, test: 3}", "model.hidden=16", "trainer.epochs=2",
         "trainer.progress=false", "model.fusion.type=max", "model.moe.router.type=top1", f"output_dir={run_dir}"],
        env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    saved = (run_dir / "recipe.yaml").read_text()
    assert "type: max" in saved and "type: top1" in saved
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_run"] == 2 and 0.0 <= results["test"]["weighted_f1"] <= 1.0
    # The run reopens through the registry with the plugin installed: `mercore eval` rebuilds both components.
    again = subprocess.run([sys.executable, "-m", "mercore", "eval", str(run_dir), "--json"], env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["accuracy"] == results["test"]["accuracy"]
