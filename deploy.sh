#!/usr/bin/env bash
# Deploys planbus to Google Cloud against a Supabase (or InsForge, or plain PostgreSQL) database:
#   1. checks the configuration (the env file, or the environment without one, and infra/) and the
#      prerequisites, before anything changes;
#   2. applies the database migrations (planbus migrate);
#   3. enables the APIs, creates the service accounts, and creates or updates each secret in Secret
#      Manager (values go in on stdin, never on a command line);
#   4. deploys each function of infra/functions.conf (gcloud functions deploy --gen2) from functions/;
#   5. stores the webhook URL and secret in the database, so the plan_requests trigger calls the deployed
#      function (on InsForge, also the realtime channel's webhook URL);
#   6. creates or updates the schedules of infra/schedules.conf (Cloud Scheduler, or Supabase Cron);
#   7. prints the URLs.
# Every step creates what is missing and updates what exists: re-running is safe. Secrets never appear in
# the output. Run ./deploy.sh --help for the options; infra/env.example documents every variable.
set -Eeuo pipefail
umask 077

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "deploy.sh: needs bash 4.4 or newer, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 1
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GCLOUD=${GCLOUD:-gcloud}
# The function the plan_requests trigger calls (contract section 4).
WEBHOOK_TARGET=handle_plan_request
APIS=(cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com
  artifactregistry.googleapis.com secretmanager.googleapis.com iam.googleapis.com)
# gcloud must never stop to ask: a question would hang an unattended deploy.
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

usage() {
  cat <<'EOF'
usage: ./deploy.sh [--env FILE] [--only FUNCTION] [--dry-run] [--infra DIR]

  --env FILE       deploy variables and settings, one NAME=value a line (default: .env.deploy, or
                   the environment when that file does not exist); infra/env.example documents them
  --only FUNCTION  deploy one function of infra/functions.conf (its secrets, webhook and schedules);
                   migrations still run
  --dry-run        check the configuration and print every command without running any
  --infra DIR      the description to deploy (default: infra/ beside this script)

GCLOUD=/path/to/gcloud selects another gcloud.
EOF
}

# ---------------------------------------------------------------------------------------------------
# Output: every command is shown before it runs, with every secret value masked.
# ---------------------------------------------------------------------------------------------------
SECRET_VALUES=()

die() {
  printf 'deploy.sh: %s\n' "$(mask "$*")" >&2
  exit 1
}
warn() { printf 'deploy.sh: warning: %s\n' "$(mask "$*")" >&2; }
STEP="start"
step() {
  STEP=$*
  printf '\n==> %s\n' "$*"
}
note() { printf '    %s\n' "$(mask "$*")"; }

remember_secret() {
  # Shorter values would mask ordinary text; no real secret is that short.
  if ((${#1} >= 4)); then SECRET_VALUES+=("$1"); fi
}

mask() {
  local text=$1 secret
  for secret in "${SECRET_VALUES[@]}"; do
    text=${text//"$secret"/***}
  done
  printf '%s' "$text"
}

mask_lines() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "$(mask "$line")"
  done
}

show() {
  local arg out=""
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '  + %s\n' "$(mask "${out# }")"
}

# run CMD...: show it, then run it (a dry run only shows it). A leading `gcloud` means $GCLOUD.
run() {
  show "$@"
  if ((DRY_RUN)); then return 0; fi
  if [[ $1 == gcloud ]]; then set -- "$GCLOUD" "${@:2}"; fi
  "$@" 2>&1 | mask_lines
}

# run_fed LABEL VALUE CMD...: like run, with VALUE on stdin (never in argv); LABEL names it in the output.
run_fed() {
  local label=$1 value=$2
  shift 2
  show "$@"
  note "(stdin: the value of $label)"
  if ((DRY_RUN)); then return 0; fi
  if [[ $1 == gcloud ]]; then set -- "$GCLOUD" "${@:2}"; fi
  printf '%s' "$value" | "$@" 2>&1 | mask_lines
}

# retry CMD...: IAM bindings for an account created a moment ago fail until the account propagates.
retry() {
  local attempt
  for attempt in 1 2 3 4 5; do
    if run "$@"; then return 0; fi
    if ((attempt < 5)); then
      warn "failed, retrying in 10 s (new service accounts take a moment to be known everywhere)"
      sleep 10
    fi
  done
  die "gave up after 5 attempts: $*"
}

# exists CMD...: whether a describe command finds its resource (0) or not (1). Other failures stop the
# deploy. A dry run cannot know: it shows the command and answers 2, and the caller shows both branches.
exists() {
  show "$@"
  if ((DRY_RUN)); then return 2; fi
  local output status=0
  output=$("$GCLOUD" "${@:2}" 2>&1) || status=$?
  if ((status == 0)); then return 0; fi
  # A disabled API holds nothing: its resources count as missing too.
  if grep -qiE 'NOT_FOUND|not found|does not exist|status=\[404\]|SERVICE_DISABLED|has not been used' \
    <<<"$output"; then return 1; fi
  printf '%s\n' "$output" | mask_lines >&2
  die "could not tell whether it exists (see above); stopped before changing it"
}

# branch STATE TEXT: in a dry run (STATE 2), say which case the next command is for.
branch() {
  if (($1 == 2)); then note "($2)"; fi
}

# ---------------------------------------------------------------------------------------------------
# Configuration: the env file and infra/
# ---------------------------------------------------------------------------------------------------
declare -A CONFIG=()
NAMES=()

# The env file's grammar: NAME=value; blank and # lines skipped; the value is literal, surrounding
# spaces dropped, one pair of surrounding quotes removed. Nothing is expanded or executed.
load_env_file() {
  local file=$1 line name value number=0
  [[ -f $file ]] || die "no env file at $file: copy infra/env.example to .env.deploy and fill it in, or pass --env FILE"
  [[ -r $file ]] || die "cannot read $file"
  while IFS= read -r line || [[ -n $line ]]; do
    number=$((number + 1))
    line=${line%$'\r'}
    if [[ $line =~ ^[[:space:]]*(#.*)?$ ]]; then continue; fi
    if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
      die "$file:$number: expected NAME=value"
    fi
    name=${BASH_REMATCH[2]}
    value=${BASH_REMATCH[3]}
    value=${value#"${value%%[![:space:]]*}"}
    value=${value%"${value##*[![:space:]]}"}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
    if [[ -v "CONFIG[$name]" ]]; then die "$file:$number: $name is set twice"; fi
    CONFIG[$name]=$value
    NAMES+=("$name")
  done <"$file"
}

# Without an env file, the same variables are read from the environment: every name infra/env.example
# lists (commented out or not) that is set there.
load_environment() {
  local example=$1 name
  while IFS= read -r name; do
    if [[ -v $name && ! -v "CONFIG[$name]" ]]; then
      CONFIG[$name]=${!name}
      NAMES+=("$name")
    fi
  done < <(sed -nE 's/^#?[[:space:]]*([A-Z][A-Z0-9_]*)=.*/\1/p' "$example")
}

config() { printf '%s' "${CONFIG[$1]-}"; }

# NAME=value pairs, NUL-separated, for `planbus configure check` on its stdin.
print_values() {
  local name
  for name in "${NAMES[@]}"; do printf '%s=%s\0' "$name" "${CONFIG[$name]}"; done
}

declare -A FUNCTION=() SCHEDULE=()
FUNCTIONS=()
SCHEDULES=()

# ini_entries FILE: "section<TAB>key<TAB>value" lines of an INI file (the subset planbus configure
# check accepts: [section], key = value, whole-line # comments).
ini_entries() {
  awk '
    /^[[:space:]]*(#|$)/ { next }
    /^\[.*\][[:space:]]*$/ { section = $0; sub(/^\[/, "", section); sub(/\][[:space:]]*$/, "", section)
                             print section; next }
    { at = index($0, "="); if (at == 0) next
      key = substr($0, 1, at - 1); value = substr($0, at + 1)
      gsub(/^[[:space:]]+|[[:space:]]+$/, "", key); gsub(/^[[:space:]]+|[[:space:]]+$/, "", value)
      print section "\t" key "\t" value }
  ' "$1"
}

load_infra() {
  local section key value
  [[ -f $INFRA/functions.conf && -f $INFRA/schedules.conf ]] ||
    die "$INFRA must hold functions.conf and schedules.conf"
  while IFS=$'\t' read -r section key value; do
    if [[ -z ${key-} ]]; then FUNCTIONS+=("$section"); else FUNCTION[$section.$key]=$value; fi
  done < <(ini_entries "$INFRA/functions.conf")
  while IFS=$'\t' read -r section key value; do
    if [[ -z ${key-} ]]; then SCHEDULES+=("$section"); else SCHEDULE[$section.$key]=$value; fi
  done < <(ini_entries "$INFRA/schedules.conf")
}

# secret_id SETTING: its Secret Manager id, e.g. WEBHOOK_SECRET -> planbus-webhook-secret.
secret_id() {
  local id=${1,,}
  printf '%s-%s' "$SECRET_PREFIX" "${id//_/-}"
}

function_name() { printf '%s' "${1//_/-}"; }

# secrets_of TARGET: the secret settings the function reads, one a line.
secrets_of() {
  local names
  read -ra names <<<"${FUNCTION[$1.secrets]-}"
  if ((${#names[@]})); then printf '%s\n' "${names[@]}"; fi
}

# ---------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------
check_prerequisites() {
  step "Prerequisites"
  if ((!DRY_RUN)); then
    command -v "$GCLOUD" >/dev/null 2>&1 ||
      die "gcloud is not installed (https://cloud.google.com/sdk/docs/install), or set GCLOUD to its path"
  fi
  show gcloud auth list --filter=status:ACTIVE --format='value(account)'
  if ((!DRY_RUN)); then
    local account
    account=$("$GCLOUD" auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null | head -n 1) || true
    [[ -n $account ]] || die "gcloud has no active account: run gcloud auth login"
    note "account: $account"
  fi
  show gcloud projects describe "$PROJECT" --format='value(projectId)'
  if ((!DRY_RUN)); then
    "$GCLOUD" projects describe "$PROJECT" --format='value(projectId)' >/dev/null 2>&1 ||
      die "project $PROJECT does not exist or this account may not see it"
  fi
}

warn_about_env_file() {
  local permissions
  permissions=$(ls -ld -- "$ENV_FILE")
  if [[ ${permissions:4:6} != "------" ]]; then
    warn "$ENV_FILE holds secrets and others may read it: chmod 600 $ENV_FILE"
  fi
  if git -C "$ROOT" ls-files --error-unmatch -- "$ENV_FILE" >/dev/null 2>&1; then
    warn "$ENV_FILE is tracked by git: its secrets are in the repository history"
  fi
}

migrate() {
  step "Database migrations"
  planbus_run migrate
}

# planbus_run ARGS...: run planbus with the env file's values in its environment (never in argv).
planbus_run() {
  show planbus "$@"
  if ((DRY_RUN)); then return 0; fi
  (
    local name
    for name in "${NAMES[@]}"; do export "$name=${CONFIG[$name]}"; done
    exec "$PLANBUS" "$@"
  ) 2>&1 | mask_lines
}

enable_apis() {
  step "APIs"
  local apis=("${APIS[@]}")
  if [[ $SCHEDULER == cloud-scheduler ]]; then apis+=(cloudscheduler.googleapis.com); fi
  run gcloud services enable "${apis[@]}" --project="$PROJECT"
}

ensure_service_account() {
  local email=$1 title=$2 state=0
  exists gcloud iam service-accounts describe "$email" --project="$PROJECT" || state=$?
  if ((state == 0)); then return 0; fi
  if [[ $email != *"@$PROJECT.iam.gserviceaccount.com" ]]; then
    if ((state == 1)); then die "service account $email does not exist; deploy.sh creates accounts of $PROJECT only"; fi
    return 0
  fi
  branch "$state" "if it does not exist"
  run gcloud iam service-accounts create "${email%@*}" --project="$PROJECT" --display-name="$title"
}

ensure_secret() {
  local setting=$1 id state=0 current=$WORK/current
  id=$(secret_id "$setting")
  exists gcloud secrets describe "$id" --project="$PROJECT" || state=$?
  if ((state != 1)); then
    branch "$state" "if it exists: a new version only when the value changed"
    show gcloud secrets versions access latest --secret="$id" --project="$PROJECT" --out-file="$current"
    if ((DRY_RUN)); then
      run_fed "$setting" "" gcloud secrets versions add "$id" --project="$PROJECT" --data-file=-
    elif "$GCLOUD" secrets versions access latest --secret="$id" --project="$PROJECT" --out-file="$current" \
      >/dev/null 2>&1 && cmp -s "$current" <(config "$setting"); then
      note "$setting: unchanged"
    else
      run_fed "$setting" "$(config "$setting")" gcloud secrets versions add "$id" --project="$PROJECT" --data-file=-
    fi
    rm -f "$current"
  fi
  if ((state != 0)); then
    branch "$state" "if it does not exist"
    run_fed "$setting" "$(config "$setting")" gcloud secrets create "$id" --project="$PROJECT" \
      --replication-policy=automatic --labels=app=planbus --data-file=-
  fi
  retry gcloud secrets add-iam-policy-binding "$id" --project="$PROJECT" \
    --member="serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor --format=none
}

deploy_function() {
  local target=$1
  local name setting access secrets=() secret_flag=--clear-secrets env_file=$WORK/env/$target.json
  name=$(function_name "$target")
  for setting in $(secrets_of "$target"); do
    if [[ -n $(config "$setting") ]]; then secrets+=("$setting=$(secret_id "$setting"):latest"); fi
  done
  if ((${#secrets[@]})); then secret_flag=--set-secrets=$(IFS=,; printf '%s' "${secrets[*]}"); fi
  access=--allow-unauthenticated
  if [[ ${FUNCTION[$target.access]} == scheduler && $SCHEDULER == cloud-scheduler ]]; then
    access=--no-allow-unauthenticated
  fi
  step "Function $name (target $target)"
  run gcloud functions deploy "$name" --gen2 --project="$PROJECT" --region="$REGION" \
    --runtime="${FUNCTION[$target.runtime]}" --source=functions --ignore-file=../infra/gcloudignore \
    --serve-all-traffic-latest-revision \
    --entry-point="$target" --trigger-http "$access" --run-service-account="$RUNTIME_SA" \
    --memory="${FUNCTION[$target.memory]}" --cpu="${FUNCTION[$target.cpu]}" \
    --timeout="${FUNCTION[$target.timeout]}s" --concurrency="${FUNCTION[$target.concurrency]}" \
    --min-instances="${FUNCTION[$target.min_instances]}" --max-instances="${FUNCTION[$target.max_instances]}" \
    --env-vars-file="$env_file" "$secret_flag"
  note "environment: $(tr -d '\n' <"$env_file")"
  read_url "$target"
  if [[ $access == --no-allow-unauthenticated ]]; then
    retry gcloud functions add-invoker-policy-binding "$name" --project="$PROJECT" --region="$REGION" \
      --member="serviceAccount:$SCHEDULER_SA" --format=none
  fi
}

declare -A URLS=()

read_url() {
  local target=$1 name url
  name=$(function_name "$target")
  show gcloud functions describe "$name" --project="$PROJECT" --region="$REGION" --format='value(serviceConfig.uri)'
  if ((DRY_RUN)); then
    URLS[$target]="<url of $name>"
    return 0
  fi
  url=$("$GCLOUD" functions describe "$name" --project="$PROJECT" --region="$REGION" \
    --format='value(serviceConfig.uri)')
  [[ $url == https://* ]] || die "gcloud gave no https URL for $name: ${url:-nothing}"
  URLS[$target]=$url
  note "url: $url"
}

configure_webhook() {
  step "Database webhook"
  planbus_run configure webhook --url="${URLS[$WEBHOOK_TARGET]}" --channel="$REALTIME_CHANNEL"
}

# schedule_job JOB: the job calls its function on its schedule, through the chosen scheduler; the other
# scheduler loses any job of that name, so a move between them never leaves a double.
schedule_job() {
  local job=$1 target=${SCHEDULE[$1.function]} state=0
  step "Schedule $job: ${SCHEDULE[$job.schedule]} ($SCHEDULER)"
  if [[ $SCHEDULER == cloud-scheduler ]]; then
    cloud_scheduler_job "$job" "$target"
  else
    exists gcloud scheduler jobs describe "$job" --project="$PROJECT" --location="$REGION" || state=$?
    if ((state != 1)); then
      branch "$state" "if it exists"
      run gcloud scheduler jobs delete "$job" --project="$PROJECT" --location="$REGION"
    fi
  fi
  if [[ $SCHEDULER == supabase-cron ]]; then
    planbus_run configure cron --job="$job" --function="$target" --url="${URLS[$target]}" \
      --schedule="${SCHEDULE[$job.schedule]}" --body="${SCHEDULE[$job.body]}" \
      --timeout="${SCHEDULE[$job.attempt_deadline]}"
  else
    planbus_run configure unschedule --job="$job"
  fi
}

# Cloud Scheduler calls with an OIDC token of the scheduler account and the shared secret. The secret
# header reaches gcloud through a private --flags-file, not argv; Google keeps it in the job, where
# anyone allowed to view the project's jobs can read it, hence the OIDC token on top: without
# roles/run.invoker on the function, the secret alone does not get a request in.
cloud_scheduler_job() {
  local job=$1 target=$2 uri state=0 common
  uri=${URLS[$target]}
  common=(--project="$PROJECT" --location="$REGION" --schedule="${SCHEDULE[$job.schedule]}"
    --time-zone="${SCHEDULE[$job.time_zone]}" --uri="$uri" --http-method=post
    --message-body="${SCHEDULE[$job.body]}" --attempt-deadline="${SCHEDULE[$job.attempt_deadline]}s"
    --max-retry-attempts=0 --description="planbus: calls $target"
    --oidc-service-account-email="$SCHEDULER_SA" --oidc-token-audience="$uri" --format=none)
  exists gcloud scheduler jobs describe "$job" --project="$PROJECT" --location="$REGION" || state=$?
  if ((state != 1)); then
    branch "$state" "if it exists"
    header_flags "--update-headers" "$WORK/$job.update.json"
    run gcloud scheduler jobs update http "$job" "${common[@]}" --flags-file="$WORK/$job.update.json"
  fi
  if ((state != 0)); then
    branch "$state" "if it does not exist"
    header_flags "--headers" "$WORK/$job.create.json"
    run gcloud scheduler jobs create http "$job" "${common[@]}" --flags-file="$WORK/$job.create.json"
  fi
  note "(flags file: headers Content-Type: application/json, X-Webhook-Secret: ***)"
}

# header_flags FLAG FILE: a gcloud flags file setting the headers. The secret is checked to hold only
# unreserved URL characters, so it needs no escaping inside JSON.
header_flags() {
  if ((DRY_RUN)); then return 0; fi
  printf '{"%s": {"Content-Type": "application/json", "X-Webhook-Secret": "%s"}}\n' \
    "$1" "$(config WEBHOOK_SECRET)" >"$2"
}

summary() {
  local target job
  if ((DRY_RUN)); then step "Summary (dry run: nothing was run)"; else step "Summary"; fi
  for target in "${SELECTED[@]}"; do
    note "$(printf '%-22s %s' "$target" "${URLS[$target]-}")"
  done
  for job in "${SCHEDULES[@]}"; do
    if [[ " ${SELECTED[*]} " == *" ${SCHEDULE[$job.function]} "* ]]; then
      note "$(printf '%-30s %s -> %s (%s)' "$job" "${SCHEDULE[$job.schedule]}" "${SCHEDULE[$job.function]}" "$SCHEDULER")"
    fi
  done
  if [[ -n ${URLS[$WEBHOOK_TARGET]-} ]]; then
    note "new plan_requests rows call ${URLS[$WEBHOOK_TARGET]} (URL and secret stored in the database)"
  fi
}

# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------
ENV_FILE=$ROOT/.env.deploy
ENV_FILE_GIVEN=0
INFRA=$ROOT/infra
ONLY=
DRY_RUN=0
while (($#)); do
  case $1 in
    --env | --only | --infra)
      (($# >= 2)) || die "$1 needs a value (see --help)"
      case $1 in --env) ENV_FILE=$2 ENV_FILE_GIVEN=1 ;; --only) ONLY=$2 ;; --infra) INFRA=$2 ;; esac
      shift 2
      ;;
    --env=*) ENV_FILE=${1#*=} ENV_FILE_GIVEN=1 && shift ;;
    --only=*) ONLY=${1#*=} && shift ;;
    --infra=*) INFRA=${1#*=} && shift ;;
    --dry-run) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
INFRA=$(cd "$INFRA" 2>/dev/null && pwd) || die "no infra folder at $INFRA"
if [[ $ENV_FILE != /* ]]; then ENV_FILE=$PWD/$ENV_FILE; fi
# gcloud takes --source=functions relative to the repository.
cd "$ROOT"

if ((ENV_FILE_GIVEN)) || [[ -e $ENV_FILE ]]; then
  load_env_file "$ENV_FILE"
  SOURCE=$ENV_FILE
else
  load_environment "$INFRA/env.example"
  ((${#NAMES[@]})) || die "no env file at $ENV_FILE and no planbus variable in the environment: copy infra/env.example to .env.deploy and fill it in, or pass --env FILE"
  SOURCE="the environment (no $ENV_FILE)"
fi
load_infra
remember_secret "$(config DATABASE_URL)"
remember_secret "$(config WEBHOOK_SECRET)"
for target in "${FUNCTIONS[@]}"; do
  for setting in $(secrets_of "$target"); do remember_secret "$(config "$setting")"; done
done
if [[ $(config DATABASE_URL) =~ ://[^:/@]+:([^@]+)@ ]]; then remember_secret "${BASH_REMATCH[1]}"; fi

if ((DRY_RUN)); then
  printf 'deploy.sh: dry run of %s: every command is printed, none is run\n' "$SOURCE"
fi
step "Configuration"
if [[ -x $ROOT/.venv/bin/planbus ]]; then
  PLANBUS=$ROOT/.venv/bin/planbus
elif command -v planbus >/dev/null 2>&1; then
  PLANBUS=$(command -v planbus)
else
  die "the planbus command is missing: run 'make install' (it creates .venv)"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
trap 'printf "deploy.sh: stopped at \"%s\": the command above failed; fix it and run deploy.sh again (every step is safe to repeat)\n" "$STEP" >&2' ERR
for file in main.py requirements.txt; do
  [[ -f $ROOT/functions/$file ]] || die "functions/$file is missing: Cloud Functions builds the source from it"
done
if ! print_values | "$PLANBUS" configure check --infra="$INFRA" --env-vars-dir="$WORK/env" 2>&1 | mask_lines; then
  die "stopped: fix the configuration in $SOURCE or $INFRA (nothing was changed)"
fi

PROJECT=$(config GCP_PROJECT)
REGION=$(config GCP_REGION)
SCHEDULER=$(config SCHEDULER)
SCHEDULER=${SCHEDULER:-cloud-scheduler}
SECRET_PREFIX=$(config SECRET_PREFIX)
SECRET_PREFIX=${SECRET_PREFIX:-planbus}
REALTIME_CHANNEL=$(config REALTIME_CHANNEL)
REALTIME_CHANNEL=${REALTIME_CHANNEL:-planbus}
RUNTIME_SA=$(config GCP_RUNTIME_SERVICE_ACCOUNT)
RUNTIME_SA=${RUNTIME_SA:-planbus-runtime@$PROJECT.iam.gserviceaccount.com}
SCHEDULER_SA=$(config GCP_SCHEDULER_SERVICE_ACCOUNT)
SCHEDULER_SA=${SCHEDULER_SA:-planbus-scheduler@$PROJECT.iam.gserviceaccount.com}

if [[ -n $ONLY ]]; then
  ONLY=${ONLY//-/_}
  [[ " ${FUNCTIONS[*]} " == *" $ONLY "* ]] || die "--only: no function $ONLY in $INFRA/functions.conf (${FUNCTIONS[*]})"
  SELECTED=("$ONLY")
else
  SELECTED=("${FUNCTIONS[@]}")
fi
[[ " ${FUNCTIONS[*]} " == *" $WEBHOOK_TARGET "* ]] || die "$INFRA/functions.conf must describe $WEBHOOK_TARGET"
note "project $PROJECT, region $REGION, scheduler $SCHEDULER, functions: ${SELECTED[*]}"

if ((!DRY_RUN)) && [[ -e $ENV_FILE ]]; then warn_about_env_file; fi
check_prerequisites
migrate
enable_apis

step "Service accounts"
ensure_service_account "$RUNTIME_SA" "planbus functions"
if [[ $SCHEDULER == cloud-scheduler ]]; then ensure_service_account "$SCHEDULER_SA" "planbus scheduler"; fi

step "Secrets"
declare -A WANTED=()
for target in "${SELECTED[@]}"; do
  for setting in $(secrets_of "$target"); do
    if [[ -n $(config "$setting") && -z ${WANTED[$setting]-} ]]; then
      WANTED[$setting]=1
      ensure_secret "$setting"
    fi
  done
done

for target in "${SELECTED[@]}"; do
  deploy_function "$target"
  if [[ $target == "$WEBHOOK_TARGET" ]]; then configure_webhook; fi
  for job in "${SCHEDULES[@]}"; do
    if [[ ${SCHEDULE[$job.function]} == "$target" ]]; then schedule_job "$job"; fi
  done
done

summary
