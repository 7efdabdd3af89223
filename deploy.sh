#!/usr/bin/env bash
# Deploys planbus to Google Cloud against a Supabase (or InsForge, or plain PostgreSQL) database:
#   1. checks the configuration (the env file, or the environment without one, and infra/) and the
#      prerequisites, before anything changes;
#   2. applies the database migrations;
#   3. enables the APIs, creates the service accounts, and creates or updates each secret in Secret
#      Manager (values go in on stdin, never on a command line);
#   4. with DISPATCH=cloud-tasks (the default), creates or updates the Cloud Tasks queue of
#      infra/queues.conf and lets the functions enqueue on it;
#   5. deploys each function of infra/functions.conf (gcloud functions deploy --gen2) from functions/,
#      the private workers first, so the webhook and sweeper functions get their URLs;
#   6. stores each request kind's webhook URL and the secret in the database, so its trigger calls the
#      deployed function (on InsForge, also the kind's realtime channel);
#   7. creates or updates the schedules of infra/schedules.conf (Cloud Scheduler, or Supabase Cron);
#   8. prints the URLs.
# Every step creates what is missing and updates what exists: re-running is safe. Secrets never appear in
# the output. ./deploy.sh --help lists the options; infra/env.example documents every variable.
#
# The plan itself is `planbus deploy` (functions/planbus/deploy/). This script only makes sure this
# checkout's .venv is installed, as the Make targets do, and hands over to it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if command -v make >/dev/null 2>&1; then
  # Creates .venv on a fresh clone and brings it up to date after pyproject.toml changed; else quiet.
  make -s -C "$ROOT" install >&2 ||
    { echo "deploy.sh: could not install planbus into $ROOT/.venv (see above)" >&2; exit 1; }
elif [[ ! -x $ROOT/.venv/bin/planbus ]]; then
  echo "deploy.sh: needs make and Python 3.11+ to create $ROOT/.venv (see the README's requirements)" >&2
  exit 1
fi

exec "$ROOT/.venv/bin/planbus" deploy --called-as=deploy.sh "$@"
