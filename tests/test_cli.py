"""`mlops-nb env` and `mlops-nb demo-data`: what they print, where they point, and that no secret leaks."""
from __future__ import annotations
import json


def test_env_json_default_tracking(home, cli):
    r = cli(home.path, "env", "--json")  # the plain helper: a path and arguments
    assert r.returncode == 0, str(r)
    d = json.loads(r.stdout)
    assert d["tracking_uri"] == f"sqlite:///{home.path}/mlflow.db"
    assert d["registry_uri"] == d["tracking_uri"]
    assert d["mlops_home"] == str(home.path)
    assert d["env"] == "dev" and d["registered_model"] == "dev.mlops_nb.demo_model"
    assert d["tables"]["training_table"] == "dev.mlops_nb.training"
    assert d["on_databricks"] is False
    assert d["secrets"] == {}


def test_env_other_env(home):
    d = json.loads(home.cli("env", "--env", "prod", "--json").stdout)
    assert d["env"] == "prod" and d["registered_model"] == "prod.mlops_nb.demo_model"
    assert d["experiment"] == "/Shared/mlops-nb/prod"
    assert d["min_auc"] == 0.7  # prod is stricter
    r = home.cli("env", "--env", "qa")
    assert r.returncode == 2 and r.error_lines() and "'qa'" in r.error_lines()[0]


def test_env_honours_mlflow_tracking_uri(home):
    uri = "http://mlflow.example.invalid:5000"
    r = home.cli("env", "--json", env={"MLFLOW_TRACKING_URI": uri})
    assert r.returncode == 0, str(r)
    d = json.loads(r.stdout)
    assert d["tracking_uri"] == uri and d["registry_uri"] == uri
    assert not (home.path/"mlflow.db").exists()  # `env` only describes; it creates nothing


def test_env_never_prints_a_secret(home):
    secret = "some-secret"
    env = {"DATABRICKS_TOKEN": secret, "DATABRICKS_HOST": "https://adb-1.azuredatabricks.net",
           "MLFLOW_TRACKING_PASSWORD": secret + "-2"}
    for args in (["env", "--json"], ["env"]):
        r = home.cli(*args, env=env)
        assert r.returncode == 0, str(r)
        assert secret not in r.stdout and secret not in r.stderr, str(r)
    d = json.loads(home.cli("env", "--json", env=env).stdout)
    assert d["secrets"] == {"DATABRICKS_TOKEN": "set", "MLFLOW_TRACKING_PASSWORD": "set"}


def test_env_never_prints_a_password_in_the_tracking_uri(home):
    "A tracking server URI may carry basic-auth credentials (https://user:password@host); `env` must not print them."
    uri = "https://alice:hunter2-secret@mlflow.example.invalid"
    for args in (["env", "--json"], ["env"]):
        r = home.cli(*args, env={"MLFLOW_TRACKING_URI": uri})
        assert r.returncode == 0, str(r)
        assert "hunter2-secret" not in r.stdout and "hunter2-secret" not in r.stderr, str(r)
    d = json.loads(home.cli("env", "--json", env={"MLFLOW_TRACKING_URI": uri}).stdout)
    assert "mlflow.example.invalid" in d["tracking_uri"]  # still says where tracking goes


def test_env_text_output(home):
    r = home.cli("env")
    assert r.returncode == 0, str(r)
    lines = {l.split()[0]: l[20:].strip() for l in r.stdout.splitlines() if l.strip()}
    assert lines["tracking_uri"] == f"sqlite:///{home.path}/mlflow.db"
    assert lines["registered_model"] == "dev.mlops_nb.demo_model"


def test_demo_data_rows_zero_exits_2(home):
    r = home.cli("demo-data", "--rows", "0")
    assert r.returncode == 2, str(r)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["mlops-nb demo-data: error: rows: expected 1 or more, found 0"]
    assert not (home.path/"tables").exists() or not any((home.path/"tables").rglob("_delta_log"))


def test_demo_data_writes_seeded_tables(make_home):
    a, b = make_home("demo_a"), make_home("demo_b")
    r = a.demo_data(rows=300, seed=7)
    assert f"wrote dev.mlops_nb.training version 0 ({a.table_path('dev.mlops_nb.training')})" in r.stdout
    assert "wrote dev.mlops_nb.scoring_batch version 0" in r.stdout
    b.demo_data(rows=300, seed=7)
    ta, tb = a.read_table("dev.mlops_nb.training").data, b.read_table("dev.mlops_nb.training").data
    assert len(ta) == 300 and ta.equals(tb)  # the same seed gives the same rows
    sa = a.read_table("dev.mlops_nb.scoring_batch").data
    assert len(sa) == 60 and "label" not in sa.columns
    assert sa.id.min() == 300  # scoring ids follow the training ids
    # writing again overwrites: a new version with the same rows
    r2 = a.demo_data(rows=300, seed=7)
    assert "dev.mlops_nb.training version 1" in r2.stdout
    assert a.read_table("dev.mlops_nb.training").data.equals(ta)


def test_help_and_env_load_no_heavy_library(home):
    "The command line imports a command's module only when it runs: --help and env stay light."
    code = ("import sys, contextlib, io\nfrom mlops_nb.cli import main\n"
            "for argv in (['env', '--json'], ['run', '--help'], ['--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'uvicorn', 'pyspark', 'numba', 'mlflow', 'sklearn', 'deltalake', 'pandas', 'papermill'))))")
    import subprocess, sys
    p = subprocess.run([sys.executable, "-c", code], env=home.environ(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", f"loaded: {p.stdout.strip()}"


def test_every_environment_variable_is_declared_once_and_listed_in_the_readme():
    "mlops_nb.variables is the one list: every MLOPS_NB_* name the package reads is in it, and the README shows it."
    import re
    from conftest import REPO
    from mlops_nb.context import STEP_PARAMS
    from mlops_nb.variables import VARIABLES, variables_markdown
    declared = {v.name for v in VARIABLES} | {f"MLOPS_NB_{p.upper()}" for p in STEP_PARAMS}
    used = {m for f in (REPO/"mlops_nb").glob("*.py") if f.name != "_modidx.py"
            for m in re.findall(r"MLOPS_NB_[A-Z][A-Z_]*[A-Z]", f.read_text())}
    assert used - declared == set(), f"read but not declared in mlops_nb.variables: {sorted(used - declared)}"
    assert variables_markdown() in (REPO/"README.md").read_text(), "README's table of variables is not variables_markdown()"


def test_every_module_says_what_it_is_in_a_whole_sentence():
    "Each generated module's docstring (its notebook's summary line) is there and ends as a sentence does."
    import ast
    from conftest import REPO
    for f in sorted((REPO/"mlops_nb").glob("*.py")):
        if f.name in ("__init__.py", "_modidx.py"): continue
        doc = ast.get_docstring(ast.parse(f.read_text()))
        assert doc and doc.rstrip().endswith((".", ")")), f"{f.name}: module summary missing or cut short: {doc!r}"


# --- The house rules of ARCHITECTURE.md ("imports point down"), checked on the generated modules and the notebooks.

# Exceptions to the rules below, each with its reason (none today: add one only with a comment saying why).
PRIVATE_IMPORT_ALLOWED = set()   # {(importing module, "module._name")}
LONG_MODULE_ALLOWED = set()      # {module}
LONG_EXPORT_CELL_ALLOWED = set() # {(notebook file, the cell's first line after `#| export`)}


def _modules() -> dict:
    "{module name: path} of every generated module but `__init__` and `_modidx`."
    from conftest import REPO
    return {f.stem: f for f in sorted((REPO/"mlops_nb").glob("*.py")) if f.name not in ("__init__.py", "_modidx.py")}


def _notebook_of(path) -> str:
    "The notebook file a module is exported from, read from the `# %% ../nbs/NN_name.ipynb` marker nbdev writes."
    import re
    m = re.search(r"^# %% \.\./nbs/([^ /]+\.ipynb)", path.read_text(), re.M)
    assert m, f"{path.name}: no '# %% ../nbs/...' marker; is it generated by nbdev_export?"
    return m.group(1)


def _mlops_imports(path) -> list:
    "(line, imported mlops_nb module, names taken from it) for every import of an mlops_nb module in `path`, at any depth."
    import ast
    mods, out = set(_modules()), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "mlops_nb" and len(parts) > 1: out.append((node.lineno, parts[1], []))
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.level == 0 else ["mlops_nb"] + [p for p in (node.module or "").split(".") if p]
            if parts[0] != "mlops_nb": continue
            if len(parts) > 1: out.append((node.lineno, parts[1], [a.name for a in node.names]))
            else: out += [(node.lineno, a.name, []) for a in node.names if a.name in mods]  # from mlops_nb import x
    return out


def test_every_import_points_down_the_notebook_order():
    "A module imports only modules whose notebooks come earlier; `cli` names the commands' modules as strings."
    mods = _modules()
    order = {m: _notebook_of(p) for m, p in mods.items()}
    assert order["core"] < order["config"] < order["training_data"] < order["explore"] < order["pyfunc_model"] < order["training"]
    up = [f"{m}.py:{line} imports {dep} ({order[m]} imports {order[dep]})"
          for m, p in mods.items() for line, dep, _ in _mlops_imports(p) if dep != m and order[dep] >= order[m]]
    assert up == [], "imports pointing up the notebook order:\n" + "\n".join(up)
    graph = {m: {dep for _, dep, _ in _mlops_imports(p) if dep != m} for m, p in mods.items()}
    def circle(m, path):
        if m in path: return path[path.index(m):] + [m]
        return next((c for d in sorted(graph[m]) if (c := circle(d, path + [m]))), None)
    circles = [c for m in graph if (c := circle(m, []))]
    assert circles == [], f"import circles: {circles[:3]}"


def test_the_import_check_finds_an_import_that_points_up(tmp_path):
    "The check above sees imports inside functions and relative ones, not only the first lines of a module."
    f = tmp_path/"m.py"
    f.write_text("from .core import env_vars\ndef f():\n    from mlops_nb.cli import main\n    import mlops_nb.training as t\n"
                 "from mlops_nb import lineage\n")
    assert sorted((d, n) for _, d, n in _mlops_imports(f)) == [("cli", ["main"]), ("core", ["env_vars"]), ("lineage", []), ("training", [])]


def _private_uses(path) -> set:
    "('x._y') for every private name of another mlops_nb module `path` imports (`from mlops_nb.x import _y`) or reads (`x._y`)."
    import ast
    me, mods, found = path.stem, set(_modules()), set()
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> mlops_nb module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "mlops_nb" and len(parts) > 1 and a.asname: aliases[a.asname] = parts[1]
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.level == 0 else ["mlops_nb"] + [p for p in (node.module or "").split(".") if p]
            if parts[0] != "mlops_nb": continue
            if len(parts) == 1: aliases.update({a.asname or a.name: a.name for a in node.names if a.name in mods})
            elif parts[1] != me:
                found |= {f"{parts[1]}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            v = node.value
            if isinstance(v, ast.Name) and aliases.get(v.id, me) != me: found.add(f"{aliases[v.id]}.{node.attr}")
            elif (isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id == "mlops_nb"
                  and v.attr in mods and v.attr != me): found.add(f"{v.attr}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    "`_name`s stay in their module: nothing imports or reads another mlops_nb module's private name."
    found = {(m, u) for m, p in _modules().items() for u in _private_uses(p)}
    assert found - PRIVATE_IMPORT_ALLOWED == set(), f"private names used across modules: {sorted(found - PRIVATE_IMPORT_ALLOWED)}"


def test_the_private_check_finds_a_private_name(tmp_path):
    f = tmp_path/"m.py"
    f.write_text("from .config import _overrides, load_config\nimport mlops_nb.lineage as lin\nfrom mlops_nb import lakehouse\n"
                 "def f():\n    import mlops_nb\n    return lin._short, lakehouse._spark(), mlops_nb.registry._x, lakehouse.__name__\n")
    assert _private_uses(f) == {"config._overrides", "lineage._short", "lakehouse._spark", "registry._x"}


def test_no_module_is_over_300_lines():
    "A module that grows past a few screens is split into notebooks of their own."
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 300}
    assert set(long) - LONG_MODULE_ALLOWED == set(), f"modules over 300 lines: {long}"


def test_no_export_cell_is_over_40_lines():
    "An exported cell fits one screen: a big function is split into smaller ones (or methods with `@patch`)."
    import json
    from conftest import REPO
    long = []
    for nb in sorted((REPO/"nbs").glob("*.ipynb")):
        for c in json.loads(nb.read_text())["cells"]:
            src = "".join(c["source"]).splitlines()
            if c["cell_type"] == "code" and src and src[0].replace(" ", "").startswith("#|export") and len(src) > 40:
                if (nb.name, src[1]) not in LONG_EXPORT_CELL_ALLOWED: long.append(f"{nb.name}: {len(src)} lines from {src[1]!r}")
    assert long == [], "export cells over 40 lines:\n" + "\n".join(long)
