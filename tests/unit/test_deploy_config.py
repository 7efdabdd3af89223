"""The configuration deploy checks before it touches the cloud: infra/ (functions, schedules, the queue),
the env file's values and the request kinds together; and the pieces of the plan that need no cloud: the
env file's grammar, the kind descriptors, how commands are shown and masked, and gcloud's ignore rules."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import functions_framework
import pytest

from planbus.cli import main as planbus
from planbus.deploy.config import DEPLOY_SETS, DEPLOY_VARIABLES, check, secret_settings, setting_names
from planbus.deploy.console import Console, quote
from planbus.deploy.envfile import from_environment, load_values, parse_env_file
from planbus.deploy.infra import FunctionSpec, load_functions, load_queue
from planbus.deploy.kinds import KINDS, kind_of
from planbus.deploy.upload import IgnoreFile
from planbus.errors import ConfigurationError
from planbus.kinds import KINDS as REGISTERED_KINDS
from planbus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VALID = {
    "GCP_PROJECT": "planbus-test",
    "GCP_REGION": "europe-west1",
    "DATABASE_URL": "postgresql://postgres:pw@db.example.supabase.co:5432/postgres",
    "WEBHOOK_SECRET": "x" * 43,
}
QUEUE_PATH = "projects/planbus-test/locations/europe-west1/queues/planbus"
TASKS_SA = "planbus-tasks@planbus-test.iam.gserviceaccount.com"


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


def copy_infra(tmp_path: Path) -> Path:
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra)
    return infra


def edit_section(infra: Path, target: str, key: str, value: str) -> None:
    """Set one key of one section of infra/functions.conf."""
    conf = infra / "functions.conf"
    text = conf.read_text()
    start = text.index(f"[{target}]")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    section = re.sub(rf"^{key} = .*$", f"{key} = {value}", text[start:end], flags=re.MULTILINE)
    conf.write_text(text[:start] + section + text[end:])


@pytest.mark.parametrize("target", [spec.target for spec in infra_targets()])
def test_main_py_serves_every_target_of_infra(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "deploy-check-secret")
    app = functions_framework.create_app(target, str(ROOT / "functions" / "main.py"))  # type: ignore[no-untyped-call]
    # Past the secret, a GET reaches the target's own function, which names itself in its refusal.
    response = app.test_client().get("/", query_string={"token": "deploy-check-secret"})
    assert (response.status_code, response.get_json()) == (405, {"error": f"{target} takes POST"})


def test_every_kind_has_its_webhook_and_its_worker_in_infra() -> None:
    targets = {spec.target: spec for spec in infra_targets()}
    for kind in KINDS:
        assert targets[kind.webhook_target].access == "public"
        assert targets[kind.worker_target].access == "tasks"


def test_the_example_env_file_is_a_valid_configuration() -> None:
    deployment = check(example_values(), INFRA)
    assert [spec.target for spec in deployment.functions] == [spec.target for spec in infra_targets()]
    assert {schedule.function for schedule in deployment.schedules} == {
        "send_due_reminders",
        "reset_stale_requests",
    }
    assert deployment.dispatch == "cloud-tasks"
    assert deployment.queue_path == "projects/my-planbus-project/locations/europe-west1/queues/planbus"


def test_the_example_env_file_documents_every_setting_and_deploy_variable() -> None:
    text = (INFRA / "env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    assert set(setting_names()) - documented == set()
    assert set(DEPLOY_VARIABLES) - documented == set()
    assert set(DEPLOY_SETS) - documented == set()
    assert documented - set(setting_names()) - set(DEPLOY_VARIABLES) - set(DEPLOY_SETS) == set()
    for name in secret_settings():
        assert re.search(rf"# SECRET\..*\n(#.*\n)*#? ?{name}=", text), f"{name} is not marked SECRET"


def test_every_secret_setting_is_read_by_some_function() -> None:
    read = {name for spec in infra_targets() for name in spec.secrets}
    assert secret_settings() - read == set()


def test_a_function_gets_plain_settings_and_threads_but_never_a_secret() -> None:
    values = {**VALID, "OPENAI_MODEL": "gpt-5", "OPENAI_API_KEY": "sk-test-123456", "LOG_LEVEL": "DEBUG"}
    deployment = check(values, INFRA)
    auth = deployment.spec("telegram_auth")
    assert auth is not None
    assert deployment.environment(auth, {}) == {"OPENAI_MODEL": "gpt-5", "LOG_LEVEL": "DEBUG", "THREADS": "8"}


def test_the_dispatching_functions_get_the_queue_the_identity_and_the_known_worker_urls() -> None:
    deployment = check(VALID, INFRA)
    urls = {"PLAN_WORKER_URL": "https://process-plan-request-x.a.run.app"}
    for target in (
        "handle_plan_request",
        "handle_draft_request",
        "reset_stale_requests",
        "process_plan_request",
    ):
        spec = deployment.spec(target)
        assert spec is not None
        assert deployment.environment(spec, urls) == {
            "THREADS": str(spec.concurrency),
            "DISPATCH": "cloud-tasks",
            "CLOUD_TASKS_QUEUE": QUEUE_PATH,
            "CLOUD_TASKS_SERVICE_ACCOUNT": TASKS_SA,
            **urls,
        }
    inline = check({**VALID, "DISPATCH": "inline"}, INFRA)
    handle = inline.spec("handle_plan_request")
    assert handle is not None
    assert inline.environment(handle, urls) == {"THREADS": "4", "DISPATCH": "inline"}
    assert [spec.target for spec in inline.deployed()] == [
        spec.target for spec in infra_targets() if spec.access != "tasks"
    ]


def test_timeouts_must_cover_the_llm_call_and_stay_within_the_lease() -> None:
    too_slow = problems_of({**VALID, "OPENAI_TIMEOUT": "130", "LEASE_SECONDS": "400"})
    assert (
        "[handle_plan_request]: timeout 150 s is shorter than OPENAI_TIMEOUT 130 + 30 s margin = 160 s"
        in too_slow
    )
    assert "[reset_stale_requests]: timeout 180 s is shorter than" in too_slow
    assert "[send_due_reminders]" not in too_slow
    assert "[handle_draft_request]" not in too_slow
    # Inline, so that the settings' own check (each dispatch deadline within the lease) lets 100 s pass.
    short_lease = problems_of({**VALID, "DISPATCH": "inline", "LEASE_SECONDS": "100"})
    assert "[handle_plan_request]: timeout 150 s is longer than LEASE_SECONDS 100" in short_lease
    assert "[telegram_auth]" not in short_lease


def test_the_sweeper_s_timeout_covers_the_longest_kind(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    edit_section(infra, "reset_stale_requests", "timeout", "160")
    text = problems_of(VALID, infra)
    slowest = max(KINDS, key=lambda kind: kind.default_timeout)
    expected = (
        f"FUNCTION_BUDGET_SECONDS 45 + {slowest.timeout_field.upper()} {slowest.default_timeout:g} + 30 s"
    )
    assert f"[reset_stale_requests]: timeout 160 s is shorter than {expected}" in text


def test_a_worker_s_timeout_must_cover_its_dispatch_deadline(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    edit_section(infra, "process_plan_request", "timeout", "80")
    text = problems_of(VALID, infra)
    assert (
        "[process_plan_request]: timeout 80 s is shorter than OPENAI_TIMEOUT 60 + 30 s margin = 90 s: the "
        "dispatch deadline, which the worker's timeout must cover"
    ) in text


def test_a_dispatch_deadline_must_stay_below_the_lease_and_is_reported_once() -> None:
    text = problems_of({**VALID, "LEASE_SECONDS": "115", "OPENAI_TIMEOUT": "85"})
    assert (
        "LEASE_SECONDS (115) must be larger than the plan dispatch deadline "
        "(115 s: its LLM timeout plus 30 s)" in text
    )
    assert text.count("plan dispatch deadline") == 1


def test_a_dispatch_deadline_beyond_what_cloud_tasks_allows_is_reported_once() -> None:
    text = problems_of({**VALID, "LEASE_SECONDS": "4000", "OPENAI_TIMEOUT": "1790"})
    assert (
        "the plan dispatch deadline (1820 s: its LLM timeout plus 30 s) is above Cloud Tasks' 1800 s" in text
    )
    assert text.count("plan dispatch deadline") == 1


def test_each_worker_must_take_every_dispatch_the_queue_lets_through(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    edit_section(infra, "process_draft_request", "max_instances", "2")
    text = problems_of(VALID, infra)
    assert (
        "[process_draft_request]: max_instances 2 * concurrency 4 is below the queue's "
        "max_concurrent_dispatches 10"
    ) in text
    assert "[process_plan_request]" not in text
    # with DISPATCH=inline there is no queue to keep up with
    check({**VALID, "DISPATCH": "inline"}, infra)


def test_each_kind_needs_a_public_webhook_and_with_cloud_tasks_a_private_worker(tmp_path: Path) -> None:
    infra = copy_infra(tmp_path)
    conf = infra / "functions.conf"
    text = conf.read_text()
    conf.write_text(text[: text.index("[process_draft_request]")])
    edit_section(infra, "handle_draft_request", "access", "scheduler")
    edit_section(infra, "telegram_auth", "access", "tasks")
    problems = problems_of(VALID, infra)
    for expected in (
        "functions.conf must describe process_draft_request: with DISPATCH=cloud-tasks it generates each "
        "draft",
        "functions.conf [handle_draft_request]: access must be public",
        "functions.conf [telegram_auth]: access = tasks is for the workers Cloud Tasks calls",
    ):
        assert expected in problems, expected
    inline = problems_of({**VALID, "DISPATCH": "inline"}, infra)
    assert "must describe process_draft_request" not in inline


def test_every_problem_of_the_values_is_reported_at_once() -> None:
    text = problems_of(
        {
            "GCP_PROJECT": "X",
            "WEBHOOK_SECRET": "has spaces in it and is long enough to pass length",
            "FOO": "1",
            "DISPATCH": "later",
            "CLOUD_TASKS_SERVICE_ACCOUNT": "worker-identity@elsewhere.iam.gserviceaccount.com",
            "PLAN_WORKER_URL": "https://somewhere.example",
            "CLOUD_TASKS_EMULATOR_HOST": "localhost:9022",
        }
    )
    for expected in (
        "unknown variable FOO",
        "GCP_PROJECT 'X' is not valid",
        "GCP_REGION is not set",
        "DATABASE_URL is not set",
        "WEBHOOK_SECRET must be at least 32 characters of A-Z a-z 0-9 . _ ~ -",
        "DISPATCH must be one of cloud-tasks, inline, not 'later'",
        "CLOUD_TASKS_SERVICE_ACCOUNT must be an account of X",
        "PLAN_WORKER_URL is set by deploy.sh (the URL of the deployed process_plan_request): leave it out",
        "CLOUD_TASKS_EMULATOR_HOST is set by deploy.sh (for local runs only",
    ):
        assert expected in text, expected
    assert "has spaces" not in text
    assert "unknown variable PLAN_WORKER_URL" not in text


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
                "access must be public, scheduler, tasks, not 'everyone'",
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
        pytest.param(
            "queues.conf",
            "[no spaces allowed]\nmax_concurrent_dispatches = 0\nmax_dispatches_per_second = 501\n"
            "max_attempts = -1\nmin_backoff = 600\nmax_backoff = 60\nmax_doublings = 17\nmax_burst = 3\n",
            (
                "queues.conf [no spaces allowed]: a queue id is 1-100 letters, digits and hyphens",
                "max_concurrent_dispatches must be a whole number from 1 to 5000, not '0'",
                "max_dispatches_per_second must be a number above 0 and at most 500",
                "max_attempts must be a whole number from 1 to 100, not '-1'",
                "max_doublings must be a whole number from 0 to 16, not '17'",
                "min_backoff is larger than max_backoff",
                "unknown key 'max_burst'",
            ),
            id="queue",
        ),
        pytest.param(
            "queues.conf",
            "[plans]\nmax_concurrent_dispatches = 5\nmax_dispatches_per_second = 1\nmax_attempts = 3\n"
            "min_backoff = 1\nmax_backoff = 10\nmax_doublings = 2\n"
            "[drafts]\nmax_concurrent_dispatches = 5\nmax_dispatches_per_second = 1\nmax_attempts = 3\n"
            "min_backoff = 1\nmax_backoff = 10\nmax_doublings = 2\n",
            ("queues.conf: describe one queue, not 2: every kind shares it",),
            id="two-queues",
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


@pytest.mark.parametrize("name", ["schedules.conf", "queues.conf"])
def test_a_missing_infra_file_is_named(tmp_path: Path, name: str) -> None:
    infra = copy_infra(tmp_path)
    (infra / name).unlink()
    assert f"{name}: no such file" in problems_of(VALID, infra)


def test_the_queue_s_limits_become_the_flags_gcloud_takes() -> None:
    problems: list[str] = []
    queue = load_queue(INFRA / "queues.conf", problems)
    assert problems == [] and queue is not None
    assert queue.flags() == [
        "--max-concurrent-dispatches=10",
        "--max-dispatches-per-second=5",
        "--max-attempts=5",
        "--min-backoff=10s",
        "--max-backoff=300s",
        "--max-doublings=4",
    ]


def test_each_kind_names_its_targets_table_and_settings_after_itself() -> None:
    plan = next(kind for kind in KINDS if kind.name == "plan")
    assert (plan.table, plan.webhook_target, plan.worker_target) == (
        "plan_requests",
        "handle_plan_request",
        "process_plan_request",
    )
    assert (plan.webhook_url_setting, plan.channel_setting, plan.worker_url_variable) == (
        "webhook_url_plan",
        "realtime_channel_plan",
        "PLAN_WORKER_URL",
    )
    assert plan.channel("planbus") == "planbus-plan"
    assert [kind.name for kind in KINDS] == ["plan", "draft"]
    assert kind_of("process_draft_request") is KINDS[1]
    assert kind_of("reset_stale_requests") is None


def test_deploy_sets_up_exactly_the_registered_kinds_with_their_timeouts() -> None:
    settings = Settings(openai_timeout=70, draft_openai_timeout=80)
    assert [kind.registered for kind in KINDS] == list(REGISTERED_KINDS)
    for kind in KINDS:
        assert kind.llm_timeout(settings) == settings.llm_timeout(kind.name)
        assert getattr(settings, kind.timeout_field) == kind.llm_timeout(settings)
        assert kind.worker_url_variable.lower() == kind.registered.worker_url_setting
    assert [(kind.timeout_field, kind.default_timeout) for kind in KINDS] == [
        ("openai_timeout", 60.0),
        ("draft_openai_timeout", 90.0),
    ]
    assert [kind.unsuffixed_settings for kind in KINDS] == [True, False]


def test_the_env_file_is_read_literally(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_bytes(
        b"# a comment\n\n  export GCP_PROJECT=planbus-test\r\nA='single # not a comment'\n"
        b'B="double $HOME"\nC=  spaced out  \nD=\nE=x=y\\n\nlower_case=1'
    )
    assert parse_env_file(env) == {
        "GCP_PROJECT": "planbus-test",
        "A": "single # not a comment",
        "B": "double $HOME",
        "C": "spaced out",
        "D": "",
        "E": "x=y\\n",
        "lower_case": "1",
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("GCP_PROJECT=a\nthis is not a setting\n", ":2: expected NAME=value"),
        ("A=1\n\nA=2\n", ":3: A is set twice"),
        ("1A=1\n", ":1: expected NAME=value"),
    ],
)
def test_a_malformed_env_file_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    env = tmp_path / "env"
    env.write_text(content)
    with pytest.raises(ConfigurationError, match=re.escape(f"{env}{message}")):
        parse_env_file(env)


def test_without_an_env_file_the_documented_variables_come_from_the_environment(tmp_path: Path) -> None:
    environ = {"GCP_PROJECT": "p", "OPENAI_TIMEOUT": "30", "HOME": "/root", "PLAN_WORKER_URL": "https://x"}
    values = from_environment(INFRA / "env.example", environ, DEPLOY_SETS)
    assert values == {"GCP_PROJECT": "p", "OPENAI_TIMEOUT": "30"}
    with pytest.raises(ConfigurationError, match=r"no env file at .* and no planbus variable"):
        load_values(None, tmp_path / ".env.deploy", INFRA, {"HOME": "/root"}, DEPLOY_SETS)
    with pytest.raises(ConfigurationError, match=r"no env file at .*nowhere"):
        load_values(tmp_path / "nowhere", tmp_path / ".env.deploy", INFRA, environ, DEPLOY_SETS)


def test_commands_are_shown_as_they_would_be_typed() -> None:
    argv = ["gcloud", "x", "--a=b,c@d:e/f+g%", "--format=value(x)", "it's", "* * * * *"]
    assert quote(argv) == "gcloud x --a=b,c@d:e/f+g% '--format=value(x)' 'it'\\''s' '* * * * *'"


def test_every_secret_is_masked_longest_first_and_short_values_are_left_alone() -> None:
    out = io.StringIO()
    console = Console("deploy.sh", out=out, err=out)
    console.remember("s3cret-value", "s3cret", "abc", "")
    console.command(["gcloud", "x", "--flag=s3cret-value", "abc"])
    console.note("s3cret and s3cret-value")
    assert out.getvalue() == "  + gcloud x --flag=*** abc\n    *** and ***\n"


@pytest.mark.parametrize(
    ("rules", "path", "is_dir", "included"),
    [
        ("cli.py\n", "planbus/cli.py", False, False),  # no slash: any depth
        ("/cli.py\n", "planbus/cli.py", False, True),  # leading slash: the top only
        ("/cli.py\n", "cli.py", False, False),
        ("planbus/cli.py\n", "x/planbus/cli.py", False, False),  # gcloud does not anchor inner slashes
        ("build/\n", "build", False, True),  # folders only
        ("build/\n", "a/build", True, False),
        ("/planbus/deploy/\n", "planbus/deploy/plan.py", False, False),  # inside an ignored folder
        ("/planbus/deploy/\n!/planbus/deploy/plan.py\n", "planbus/deploy/plan.py", False, False),
        ("*.py\n!main.py\n", "main.py", False, True),  # the last match decides
        ("*.py\n!main.py\n", "planbus/x.py", False, False),
        ("/planbus/**/cache\n", "planbus/a/b/cache", False, False),
        ("/planbus/**/cache\n", "other/a/cache", False, True),
        ("# a comment\n\n   \n", "anything", False, True),
        ("with\\ space \n", "with space", False, False),
    ],
)
def test_the_ignore_file_follows_gcloud_s_rules(
    tmp_path: Path, rules: str, path: str, is_dir: bool, included: bool
) -> None:
    ignore = tmp_path / "ignore"
    ignore.write_text(rules)
    assert IgnoreFile.read(ignore).includes(path, is_dir=is_dir) is included


def test_an_include_directive_is_refused(tmp_path: Path) -> None:
    ignore = tmp_path / "ignore"
    ignore.write_text("#!include:.gitignore\n")
    with pytest.raises(ConfigurationError, match="#!include"):
        IgnoreFile.read(ignore)


def test_configure_check_reads_the_env_file_as_deploy_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "env"
    env.write_text("".join(f"{name}={value}\n" for name, value in VALID.items()))
    assert planbus(["configure", "check", f"--env={env}"]) == 0
    assert (
        f"configuration of {env} is valid: {len(infra_targets())} functions, 2 schedules"
        in capsys.readouterr().out
    )
    env.write_text("".join(f"{name}={value}\n" for name, value in VALID.items()) + "DISPATCH=soon\n")
    assert planbus(["configure", "check", f"--env={env}"]) == 1
    assert "DISPATCH must be one of cloud-tasks, inline, not 'soon'" in capsys.readouterr().err
