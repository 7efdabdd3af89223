"""What every function uploads (functions/ less infra/gcloudignore, by gcloud's rules) is what the
functions import, and enough on its own: the uploaded tree, in an interpreter that sees neither the
checkout nor the editable install and may import only the runtime requirements (functions/requirements.txt
and what they depend on), serves every target of functions/main.py against a real database."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import sysconfig
import uuid
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from planbus.deploy.kinds import KINDS
from planbus.deploy.upload import uploaded_files

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "functions"
IGNORE = ROOT / "infra" / "gcloudignore"
SECRET = "upload-test-secret-" + "x" * 24

# Run with -I -S: no site-packages processing, so no .pth file puts the checkout on sys.path. Imports of
# third-party packages outside the runtime requirements fail, as they would in the deployed function.
PROBE = """
import importlib.abc, importlib.machinery, json, sys
tree, site_packages, allowed = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))
sys.path[:0] = [tree]
sys.path.append(site_packages)
refused = []

class OnlyRuntimeRequirements(importlib.abc.MetaPathFinder):
    \"\"\"A top-level package from site-packages must belong to the runtime requirements.\"\"\"
    def find_spec(self, name, path=None, target=None):
        if path is not None or name in allowed:
            return None
        if importlib.machinery.PathFinder.find_spec(name, [site_packages]) is None:
            return None
        refused.append(name)
        raise ImportError(f"{name} is not a runtime requirement")

sys.meta_path.insert(0, OnlyRuntimeRequirements())
import functions_framework
import planbus
assert planbus.__file__.startswith(tree), planbus.__file__
answers = {}
for target, body in json.loads(sys.argv[4]).items():
    client = functions_framework.create_app(target, tree + "/main.py").test_client()
    response = client.post("/", json=body, headers={"X-Webhook-Secret": sys.argv[5]})
    answers[target] = [response.status_code, response.get_json(silent=True)]
print(json.dumps({"answers": answers, "refused": sorted(set(refused))}))
"""


def main_targets() -> list[str]:
    tree = ast.parse((SOURCE / "main.py").read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any("functions_framework" in ast.unparse(decorator) for decorator in node.decorator_list)
    ]


def imported_modules() -> set[str]:
    """Every planbus module main.py imports, directly or not, lazily (inside a function) or not."""
    seen: set[str] = set()
    todo = ["main"]
    while todo:
        name = todo.pop()
        path = module_path(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((SOURCE / path).read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for imported in names:
                parts = imported.split(".")
                if parts[0] == "planbus":
                    todo += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return seen


def module_path(name: str) -> str | None:
    """The file of a module of functions/, relative to it, if it is one (not a name inside a module)."""
    base = name.replace(".", "/")
    for candidate in (f"{base}/__init__.py", f"{base}.py"):
        if (SOURCE / candidate).is_file():
            return candidate
    return None


def runtime_packages() -> set[str]:
    """The top-level modules of functions/requirements.txt's distributions and everything they need."""
    lines = (SOURCE / "requirements.txt").read_text().splitlines()
    todo = [(Requirement(line), "") for line in lines if line.strip() and not line.startswith("#")]
    done: set[str] = set()
    modules: set[str] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = f"{requirement.name.lower()}[{','.join(sorted(requirement.extras))}]"
        if key in done:
            continue
        done.add(key)
        distribution = metadata.distribution(requirement.name)
        modules |= top_level_modules(distribution)
        for needed in distribution.requires or []:
            for wanted in ["", *requirement.extras]:
                todo.append((Requirement(needed), wanted))
    return modules


def top_level_modules(distribution: metadata.Distribution) -> set[str]:
    listed = distribution.read_text("top_level.txt")
    if listed:
        return set(listed.split())
    names = set()
    for file in distribution.files or []:
        first = file.parts[0]
        if first.endswith((".dist-info", ".data")) or first == "..":
            continue
        names.add(first.removesuffix(".py") if len(file.parts) == 1 else first)
    return {name for name in names if name.isidentifier()}


def request_for(target: str) -> dict[str, object]:
    """A request each target answers without a side effect: an unknown request id for a kind's webhook
    and worker, an empty batch for the scheduled functions, an invalid initData for the sign-in."""
    unknown = str(uuid.uuid4())
    for kind in KINDS:
        if target == kind.webhook_target:
            record = {"id": unknown, "status": "pending"}
            return {
                "type": "INSERT",
                "table": kind.table,
                "schema": "public",
                "record": record,
                "old_record": None,
            }
        if target == kind.worker_target:
            return {"request_id": unknown}
    if target == "telegram_auth":
        return {"init_data": "auth_date=1&hash=00"}
    return {}


def test_the_upload_holds_every_module_the_functions_import_and_nothing_else() -> None:
    kept = set(uploaded_files(SOURCE, IGNORE))
    needed = {path for name in imported_modules() if (path := module_path(name)) is not None}
    assert needed - kept == set(), "imported by the functions but left out by infra/gcloudignore"
    python = {path for path in kept if path.endswith(".py")}
    assert python - needed == set(), (
        "uploaded but never imported by the functions: add it to infra/gcloudignore"
    )
    assert "requirements.txt" in kept
    assert not any(
        path.startswith(("planbus/devstack/", "planbus/deploy/", "planbus/commands/")) for path in kept
    )


def test_the_uploaded_tree_alone_serves_every_target_of_main_py(tmp_path: Path, database_url: str) -> None:
    tree = tmp_path / "upload"
    for name in uploaded_files(SOURCE, IGNORE):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SOURCE / name, tree / name)
    requests = {target: request_for(target) for target in main_targets()}
    environment = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": SECRET,
        "PLAN_GENERATOR": "offline",
        "TELEGRAM_BOT_TOKEN": "123456:upload-test-token",
        "SUPABASE_JWT_SECRET": "j" * 40,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            PROBE,
            str(tree),
            sysconfig.get_paths()["purelib"],
            json.dumps(sorted(runtime_packages())),
            json.dumps(requests),
            SECRET,
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    answers = result["answers"]
    assert set(answers) == set(requests) and len(answers) >= 4
    for target, (status, body) in answers.items():
        kind = next((kind for kind in KINDS if target in (kind.webhook_target, kind.worker_target)), None)
        why = (target, status, body, "refused imports:", result["refused"])
        if kind is not None:
            assert status == 200 and body["outcome"] == "skipped", why
        elif target == "telegram_auth":
            assert status == 401 and "invalid initData" in body["error"], why
        else:
            assert status == 200 and isinstance(body, dict) and "error" not in body, why
