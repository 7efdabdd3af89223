"""A cold start of the functions module pays for neither openai nor supabase: they load only when used.

The time it takes is measured by tests/bench/bench_cold_start.py (`make bench ARGS="--only cold_start"`),
not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("openai", "supabase", "postgrest", "httpx2")

PROBE = """
import json, sys
sys.path.insert(0, "functions")
import main
assert callable(main.handle_plan_request)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_the_function_module_imports_without_openai_or_supabase() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "planbus" in loaded and "functions_framework" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_choosing_the_offline_generator_does_not_import_openai() -> None:
    probe = (
        "import sys, uuid, datetime\n"
        "from planbus.llm import make_generator\n"
        "from planbus.models import LeadFacts\n"
        "from planbus.settings import Settings\n"
        "generator = make_generator(Settings())\n"
        "generator.generate(LeadFacts(id=uuid.uuid4(), full_name='Ada'), today=datetime.date.today())\n"
        "print('openai' in sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no OPENAI_API_KEY from the outside world
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    assert done.stdout.strip() == "False"
