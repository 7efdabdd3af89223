"""The first thing an operator tries, on a fresh clone with nothing installed: the README's two lines,
`cp infra/env.example .env.deploy` and `./deploy.sh --dry-run`. deploy.sh installs .venv as the Make
targets do (it takes a minute: the whole install runs), then prints the plan; no gcloud is needed.

The clone is of this checkout's HEAD with its uncommitted changes to tracked files applied, so the test
checks the code as it stands."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from support.deploy_runs import ROOT, TARGETS, name_of


def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_a_dry_run_on_a_fresh_clone_sets_up_what_it_needs() -> None:
    with tempfile.TemporaryDirectory(prefix="planbus-clone-") as folder:
        clone = Path(folder) / "planbus"
        cloned = run("git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone), cwd=Path(folder))
        assert cloned.returncode == 0, cloned.stderr
        changes = run("git", "diff", "HEAD", "--binary", cwd=ROOT).stdout
        if changes:
            applied = subprocess.run(
                ["git", "apply"], cwd=clone, input=changes, text=True, capture_output=True
            )
            assert applied.returncode == 0, applied.stderr
        assert not (clone / ".venv").exists()
        shutil.copy(clone / "infra" / "env.example", clone / ".env.deploy")
        path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL")},
            "PATH": path,
            "GCLOUD": "/nonexistent/gcloud",
        }
        dry = run("./deploy.sh", "--dry-run", cwd=clone, env=env)
        assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
        assert (clone / ".venv" / "bin" / "planbus").is_file()
        assert f"deploy.sh: dry run of {clone / '.env.deploy'}: every command is printed" in dry.stdout
        for target in TARGETS:
            assert f"+ gcloud functions deploy {name_of(target)} --gen2" in dry.stdout
        assert "==> Summary (dry run: nothing was run)" in dry.stdout
        # Once set up, the next run starts at once and prints the same plan.
        again = run("./deploy.sh", "--dry-run", cwd=clone, env=env)
        assert again.returncode == 0 and again.stderr == ""
        assert again.stdout.count("\n  + ") == dry.stdout.count("\n  + ")
