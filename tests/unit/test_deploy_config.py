"""The configuration deploy.sh checks before it touches the cloud: infra/, the env file's values, and
functions/ as a Cloud Functions source (every target of infra/functions.conf is served by main.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import functions_framework
import pytest

from planbus.commands.configure import read_values
from planbus.deploy.config import DEPLOY_VARIABLES, check, secret_settings, setting_names
from planbus.deploy.infra import FunctionSpec, load_functions
from planbus.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VALID = {
    "GCP_PROJECT": "planbus-test",
    "GCP_REGION": "europe-west1",
    "DATABASE_URL": "postgresql://postgres:pw@db.example.supabase.co:5432/postgres",
    "WEBHOOK_SECRET": "x" * 43,
}


def infra_targets() -> list[FunctionSpec]:
    problems: list[str] = []
    functions = load_functions(INFRA / "functions.conf", secret_settings(), problems)
    assert problems == []
    return functions


def example_values() -> dict[str, str]:
    """The variables infra/env.example sets (it uses only plain NAME=value lines)."""
    lines = (INFRA / "env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z][A-Z0-9_]*=", line))


def problems_of(values: dict[str, str], infra: Path = INFRA) -> str:
    with pytest.raises(ConfigurationError) as caught:
        check(values, infra)
    return str(caught.value)


@pytest.mark.parametrize("target", [spec.target for spec in infra_targets()])
def test_main_py_serves_every_target_of_infra(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "deploy-check-secret")
    app = functions_framework.create_app(target, str(ROOT / "functions" / "main.py"))  # type: ignore[no-untyped-call]
    # Past the secret, a GET reaches the target's own function, which names itself in its refusal.
    response = app.test_client().get("/", query_string={"token": "deploy-check-secret"})
    assert (response.status_code, response.get_json()) == (405, {"error": f"{target} takes POST"})


def test_the_example_env_file_is_a_valid_configuration() -> None:
    deployment = check(example_values(), INFRA)
    assert [spec.target for spec in deployment.functions] == [spec.target for spec in infra_targets()]
    assert {schedule.function for schedule in deployment.schedules} == {
        "send_due_reminders",
        "reset_stale_requests",
    }


def test_the_example_env_file_documents_every_setting_and_deploy_variable() -> None:
    text = (INFRA / "env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    assert set(setting_names()) - documented == set()
    assert set(DEPLOY_VARIABLES) - documented == set()
    assert documented - set(setting_names()) - set(DEPLOY_VARIABLES) == set()
    for name in secret_settings():
        assert re.search(rf"# SECRET\..*\n(#.*\n)*#? ?{name}=", text), f"{name} is not marked SECRET"


def test_every_secret_setting_is_read_by_some_function() -> None:
    read = {name for spec in infra_targets() for name in spec.secrets}
    assert secret_settings() - read == set()


def test_a_function_gets_plain_settings_and_threads_but_never_a_secret() -> None:
    values = {**VALID, "OPENAI_MODEL": "gpt-5", "OPENAI_API_KEY": "sk-test-123456", "LOG_LEVEL": "DEBUG"}
    deployment = check(values, INFRA)
    handle = next(spec for spec in deployment.functions if spec.target == "handle_plan_request")
    assert deployment.environment(handle) == {"OPENAI_MODEL": "gpt-5", "LOG_LEVEL": "DEBUG", "THREADS": "4"}


def test_timeouts_must_cover_the_llm_call_and_stay_within_the_lease() -> None:
    too_slow = problems_of({**VALID, "OPENAI_TIMEOUT": "130", "LEASE_SECONDS": "400"})
    assert (
        "[handle_plan_request]: timeout 150 s is shorter than OPENAI_TIMEOUT 130 + 30 s margin = 160 s"
        in too_slow
    )
    assert "[reset_stale_requests]: timeout 180 s is shorter than" in too_slow
    assert "[send_due_reminders]" not in too_slow
    short_lease = problems_of({**VALID, "LEASE_SECONDS": "100"})
    assert "[handle_plan_request]: timeout 150 s is longer than LEASE_SECONDS 100" in short_lease
    assert "[telegram_auth]" not in short_lease


def test_every_problem_of_the_values_is_reported_at_once() -> None:
    text = problems_of(
        {
            "GCP_PROJECT": "X",
            "WEBHOOK_SECRET": "has spaces in it and is long enough to pass length",
            "FOO": "1",
        }
    )
    for expected in (
        "unknown variable FOO",
        "GCP_PROJECT 'X' is not valid",
        "GCP_REGION is not set",
        "DATABASE_URL is not set",
        "WEBHOOK_SECRET must be at least 32 characters of A-Z a-z 0-9 . _ ~ -",
    ):
        assert expected in text
    assert "has spaces" not in text


def test_invalid_settings_are_reported_by_name() -> None:
    text = problems_of({**VALID, "PLAN_GENERATOR": "magic", "MAX_ATTEMPTS": "0"})
    assert "PLAN_GENERATOR: " in text
    assert "MAX_ATTEMPTS: " in text


def test_a_setting_in_the_shell_but_not_in_the_file_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "10")
    deployment = check(VALID, INFRA)
    assert deployment.settings.lease_seconds == 180


def test_a_secret_no_function_reads_is_refused(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    conf = infra / "functions.conf"
    conf.write_text(conf.read_text().replace(" SUPABASE_JWT_SECRET", ""))
    text = problems_of({**VALID, "SUPABASE_JWT_SECRET": "jwt-secret-value"}, infra)
    assert "SUPABASE_JWT_SECRET is set but no function in functions.conf reads it" in text


def copy_infra(tmp_path: Path) -> Path:
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra)
    return infra


@pytest.mark.parametrize(
    ("name", "content", "problems"),
    [
        pytest.param(
            "functions.conf",
            "[handle_plan_request]\nruntime = node20\nmemory = lots\ncpu = .5\ntimeout = 150\n"
            "concurrency = 4\nmin_instances = 3\nmax_instances = 2\naccess = everyone\n"
            "secrets = DATABASE_URL OPENAI_MODEL\ncalls_llm = maybe\nbatch = no\ncolour = blue\n"
            "[send_due_reminders]\nruntime = python312\n",
            (
                "runtime must be a Python runtime",
                "memory must look like 256Mi or 1Gi, not 'lots'",
                "a concurrency above 1 needs cpu = 1 or more",
                "min_instances is larger than max_instances",
                "access must be public or scheduler, not 'everyone'",
                "OPENAI_MODEL is not a secret setting",
                "calls_llm must be yes or no, not 'maybe'",
                "unknown key 'colour'",
                "functions.conf [send_due_reminders]: memory is missing",
                "schedules.conf [planbus-send-due-reminders]: function 'send_due_reminders' is not in "
                "functions.conf",
            ),
            id="functions",
        ),
        pytest.param(
            "schedules.conf",
            "[bad job!]\nfunction = nothing\nschedule = every minute\ntime_zone = Mars/Olympus\n"
            "body = [1]\nattempt_deadline = 5\n"
            "[planbus-send-due-reminders]\nfunction = send_due_reminders\nschedule = * * * * *\n"
            "time_zone = Etc/UTC\nbody = {}\nattempt_deadline = 600\n",
            (
                "a job name is letters, digits, hyphens and underscores",
                "function 'nothing' is not in functions.conf",
                "schedule must be a five-field cron expression, not 'every minute'",
                "time_zone 'Mars/Olympus' is not an IANA time zone",
                "body must be a JSON object, not '[1]'",
                "[bad job!]: attempt_deadline must be a whole number from 15 to 1800, not '5'",
                "[planbus-send-due-reminders]: attempt_deadline must be a whole number from 15 to 120, "
                "not '600'",
            ),
            id="schedules",
        ),
    ],
)
def test_a_malformed_infra_file_is_refused_with_every_problem(
    tmp_path: Path, name: str, content: str, problems: tuple[str, ...]
) -> None:
    infra = copy_infra(tmp_path)
    (infra / name).write_text(content)
    text = problems_of(VALID, infra)
    for expected in problems:
        assert expected in text, expected


def test_a_missing_infra_file_is_named(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    (infra / "schedules.conf").unlink()
    assert "schedules.conf: no such file" in problems_of(VALID, infra)


def test_values_arrive_as_nul_separated_pairs() -> None:
    assert read_values(b"A=1\0B=x=y\0C=\0") == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ConfigurationError):
        read_values(b"A=1\0garbage\0")
