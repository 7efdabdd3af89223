-- One state machine for every kind of request. A kind (plan, draft, ...) is a table in `public` with the
-- request columns of contract section 4, registered in planbus_private.request_kinds with its completion
-- step: a SQL function that runs in the transaction that completes the request. The transitions below take
-- the kind and work on its table; they replace the plan-only functions of migration 0003.
--
--   pending --claim--> processing --complete (+ the kind's completion step)--> completed
--      ^                   |  \--fail(permanent, or retryable on the last attempt)--> failed
--      |                   |
--      +--fail(retryable)--+   (run_after = now() + the later of the backoff and the server's Retry-After)
--      +--reset_stale------+   (lease expired; failed instead once attempts reach max_attempts)
--
-- Fencing is unchanged: completion and failure are accepted only from the live attempt (status
-- 'processing', attempts = the claim's attempt, lease not expired). Each call finds its table with one
-- primary-key look-up in the registry and runs at most two statements on it in the common case; the table
-- name is quoted once per call (format %I), never taken from the caller.
-- Arguments that make no sense raise SQLSTATE 22023 with a message naming the argument, and change nothing.
-- Every function is SECURITY DEFINER and executable by service_role only (secure_functions at the end).

-- The registry. `table_name` is a table in schema public; `complete_function` takes (request jsonb: the
-- completed row, completion jsonb: what the worker passed) and returns a jsonb object merged into the
-- answer of planbus_complete_request; `daily_limit_default` is the Mini App's requests per user per UTC
-- day when no `daily_<kind>_request_limit` setting says otherwise (NULL: unlimited).
CREATE TABLE IF NOT EXISTS planbus_private.request_kinds (
  kind                text PRIMARY KEY CHECK (kind ~ '^[a-z][a-z0-9_]{0,30}$'),
  table_name          text NOT NULL UNIQUE CHECK (table_name ~ '^[a-z][a-z0-9_]{0,62}$'),
  complete_function   regprocedure NOT NULL,
  daily_limit_default int CHECK (daily_limit_default >= 0),
  created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION planbus_private.request_kind(p_kind text) RETURNS planbus_private.request_kinds
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds;
BEGIN
  SELECT * INTO k FROM planbus_private.request_kinds WHERE kind = p_kind;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown request kind: %', coalesce(p_kind, 'null') USING ERRCODE = '22023';
  END IF;
  RETURN k;
END
$$;

-- The error history of every kind: one row per failed attempt. `retry_at` is when the next attempt may
-- run (NULL when the failure was final), `retry_basis` what chose that time: the backoff, the server's
-- Retry-After (`retry_after_seconds`, as the server asked), or that Retry-After capped at an hour.
-- Rows go with their request (the forget_request_errors trigger below).
CREATE TABLE IF NOT EXISTS planbus_private.request_errors (
  id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  kind                text NOT NULL REFERENCES planbus_private.request_kinds (kind),
  request_id          uuid NOT NULL,
  attempt             int NOT NULL,
  at                  timestamptz NOT NULL DEFAULT now(),
  message             text NOT NULL,
  retry_at            timestamptz,
  retry_basis         text CHECK (retry_basis IN ('backoff', 'retry_after', 'retry_after_capped')),
  retry_after_seconds double precision,
  CONSTRAINT request_errors_retry_has_basis CHECK ((retry_at IS NULL) = (retry_basis IS NULL))
);
CREATE INDEX IF NOT EXISTS request_errors_request ON planbus_private.request_errors (request_id);
CREATE INDEX IF NOT EXISTS request_errors_at ON planbus_private.request_errors (at);

-- What each webhook delivery did: the trigger's pg_net post (with pg_net's request id, whose answer lands
-- in net._http_response), and the functions' own reports (an enqueue that failed, ...).
CREATE TABLE IF NOT EXISTS planbus_private.webhook_deliveries (
  id             bigserial PRIMARY KEY,
  kind           text NOT NULL,
  request_id     uuid NOT NULL,
  channel        text NOT NULL CHECK (channel IN ('pg_net', 'cloud_tasks', 'relay')),
  net_request_id bigint,
  outcome        text,
  detail         text,
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_created_at ON planbus_private.webhook_deliveries (created_at);

-- Daily request counts per kind and Telegram user (see enforce_daily_request_limit).
CREATE TABLE IF NOT EXISTS planbus_private.daily_request_counts (
  kind        text NOT NULL REFERENCES planbus_private.request_kinds (kind),
  telegram_id bigint NOT NULL,
  day         date NOT NULL,
  requests    int NOT NULL CHECK (requests >= 0),
  PRIMARY KEY (kind, telegram_id)
);

GRANT ALL ON planbus_private.request_kinds, planbus_private.request_errors, planbus_private.webhook_deliveries,
  planbus_private.daily_request_counts TO service_role;
GRANT ALL ON SEQUENCE planbus_private.webhook_deliveries_id_seq TO service_role;

-- -- shared helpers --------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION planbus_private.record_request_error(
  p_kind text, p_request_id uuid, p_attempt int, p_message text,
  p_retry_at timestamptz DEFAULT NULL, p_retry_basis text DEFAULT NULL, p_retry_after_seconds double precision DEFAULT NULL
) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO planbus_private.request_errors
         (kind, request_id, attempt, message, retry_at, retry_basis, retry_after_seconds)
  VALUES (p_kind, p_request_id, p_attempt, left(p_message, 2000), p_retry_at, p_retry_basis, p_retry_after_seconds)
$$;

-- Deleted requests take their error history with them (a foreign key cannot span the kinds' tables).
CREATE OR REPLACE FUNCTION planbus_private.forget_request_errors() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  DELETE FROM planbus_private.request_errors e USING gone WHERE e.kind = TG_ARGV[0] AND e.request_id = gone.id;
  RETURN NULL;
END
$$;

-- The completion of a plan's reminders: the message names the completion argument that carries them.
CREATE OR REPLACE FUNCTION planbus_private.check_reminders(p_reminders jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  item jsonb;
  position int := 0;
  seen int[] := '{}';
  step numeric;
BEGIN
  PERFORM planbus_private.require(jsonb_typeof(p_reminders) = 'array',
    'p_completion.reminders must be a JSON array');
  FOR item IN SELECT value FROM jsonb_array_elements(p_reminders) LOOP
    PERFORM planbus_private.require(jsonb_typeof(item) = 'object',
      format('reminder %s must be an object', position));
    PERFORM planbus_private.require(jsonb_typeof(item -> 'step_index') = 'number',
      format('reminder %s needs a step_index', position));
    step := (item ->> 'step_index')::numeric;
    PERFORM planbus_private.require(step >= 0 AND step <= 1000 AND step = trunc(step),
      format('reminder %s: step_index must be an integer from 0 to 1000', position));
    PERFORM planbus_private.require(NOT step::int = ANY (seen),
      format('reminder %s: step_index %s appears twice', position, step));
    seen := seen || step::int;
    PERFORM planbus_private.require(jsonb_typeof(item -> 'due_at') = 'string',
      format('reminder %s needs a due_at timestamp', position));
    PERFORM (item ->> 'due_at')::timestamptz;
    PERFORM planbus_private.require(length(btrim(coalesce(item ->> 'text', ''))) > 0,
      format('reminder %s needs a non-empty text', position));
    position := position + 1;
  END LOOP;
END
$$;

-- -- the state machine -----------------------------------------------------------------------------------

DROP FUNCTION IF EXISTS public.planbus_claim_request(uuid, int, int);
DROP FUNCTION IF EXISTS public.planbus_complete_request(uuid, int, jsonb, jsonb, jsonb);
DROP FUNCTION IF EXISTS public.planbus_fail_request(uuid, int, text, boolean, int);
DROP FUNCTION IF EXISTS public.planbus_reset_stale_requests(int);
DROP FUNCTION IF EXISTS public.planbus_find_lost_requests(int, int);
DROP FUNCTION IF EXISTS planbus_private.record_request_error(uuid, int, text);

-- Claim one request of a kind by id: from 'pending' once its run_after has come, or from 'processing'
-- whose lease expired (the lost attempt is written to the error history). A claimable row that has used
-- all its attempts is failed for good instead.
-- Returns {claimed: true, attempt, request, lead} or {claimed: false, status, reason}; status is null for
-- an unknown id.
CREATE OR REPLACE FUNCTION public.planbus_claim_request(
  p_kind text, p_request_id uuid, p_lease_seconds int, p_max_attempts int
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  requests text := format('public.%I', (planbus_private.request_kind(p_kind)).table_name);
  claimed jsonb;
  r record;
  found_rows int;
  reason text;
BEGIN
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  PERFORM planbus_private.require(p_lease_seconds > 0, 'p_lease_seconds must be positive');
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');

  -- The common case in one statement: a pending row whose time has come. Concurrent claimers queue on the
  -- row lock; each later one re-checks this condition against the winner's update and falls through.
  EXECUTE format($sql$
    UPDATE %s t
       SET status = 'processing', attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => $2), error = NULL
     WHERE t.id = $1 AND t.status = 'pending' AND t.run_after <= now() AND t.attempts < $3
    RETURNING to_jsonb(t)$sql$, requests)
    INTO claimed USING p_request_id, p_lease_seconds, p_max_attempts;

  IF claimed IS NULL THEN
    -- The row lock serialises the slower paths too: the second claimer waits, then sees the first's claim.
    EXECUTE format('SELECT id, status, attempts, run_after, lease_expires_at FROM %s WHERE id = $1 FOR UPDATE',
                   requests)
      INTO r USING p_request_id;
    GET DIAGNOSTICS found_rows = ROW_COUNT;
    IF found_rows = 0 THEN
      RETURN jsonb_build_object('claimed', false, 'status', NULL, 'reason', 'unknown request');
    END IF;
    IF r.status IN ('completed', 'failed') THEN
      RETURN jsonb_build_object('claimed', false, 'status', r.status, 'reason', 'already ' || r.status);
    END IF;
    IF r.status = 'processing' AND r.lease_expires_at > now() THEN
      RETURN jsonb_build_object('claimed', false, 'status', r.status,
        'reason', format('held by another worker until %s', r.lease_expires_at));
    END IF;
    IF r.status = 'pending' AND r.run_after > now() THEN
      RETURN jsonb_build_object('claimed', false, 'status', r.status,
        'reason', format('retry scheduled at %s', r.run_after));
    END IF;

    -- A takeover: the attempt that held the lease never reported back. It goes into the error history.
    IF r.status = 'processing' THEN
      PERFORM planbus_private.record_request_error(p_kind, r.id, r.attempts,
        format('lease expired during attempt %s', r.attempts));
    END IF;

    IF r.attempts >= p_max_attempts THEN
      reason := format('gave up after %s attempts: %s', r.attempts, CASE
        WHEN r.status = 'processing' THEN 'the lease expired before the worker finished'
        ELSE 'no attempts left' END);
      EXECUTE format('UPDATE %s SET status = ''failed'', lease_expires_at = NULL, error = $2 WHERE id = $1',
                     requests)
        USING r.id, reason;
      PERFORM planbus_private.record_request_error(p_kind, r.id, r.attempts, reason);
      RETURN jsonb_build_object('claimed', false, 'status', 'failed', 'reason', reason);
    END IF;

    EXECUTE format($sql$
      UPDATE %s t
         SET status = 'processing', attempts = t.attempts + 1,
             lease_expires_at = now() + make_interval(secs => $2), error = NULL
       WHERE t.id = $1
      RETURNING to_jsonb(t)$sql$, requests)
      INTO claimed USING r.id, p_lease_seconds;
  END IF;

  RETURN jsonb_build_object(
    'claimed', true,
    'attempt', (claimed ->> 'attempts')::int,
    'request', claimed,
    'lead', (SELECT to_jsonb(l) FROM public.leads l WHERE l.id = (claimed ->> 'lead_id')::uuid));
END
$$;

-- Complete the claimed attempt: store p_result (a JSON object) and run the kind's completion step with
-- the completed row and p_completion (a JSON object, kind-specific), all in this one transaction: if the
-- step refuses, nothing is written.
-- Returns {completed: true, ...the step's answer} or {completed: false, status, reason} when the claim is
-- no longer held (nothing is written then).
CREATE OR REPLACE FUNCTION public.planbus_complete_request(
  p_kind text, p_request_id uuid, p_attempt int, p_result jsonb, p_completion jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds := planbus_private.request_kind(p_kind);
  requests text := format('public.%I', k.table_name);
  completion jsonb := coalesce(p_completion, '{}');
  done jsonb;
  status text;
  step jsonb;
BEGIN
  PERFORM planbus_private.require(jsonb_typeof(p_result) = 'object', 'p_result must be a JSON object');
  PERFORM planbus_private.require(jsonb_typeof(completion) = 'object', 'p_completion must be a JSON object');

  EXECUTE format($sql$
    UPDATE %s t
       SET status = 'completed', result = $3, error = NULL, lease_expires_at = NULL
     WHERE t.id = $1 AND t.status = 'processing' AND t.attempts = $2 AND t.lease_expires_at > now()
    RETURNING to_jsonb(t)$sql$, requests)
    INTO done USING p_request_id, p_attempt, p_result;
  IF done IS NULL THEN
    EXECUTE format('SELECT status FROM %s WHERE id = $1', requests) INTO status USING p_request_id;
    RETURN jsonb_build_object('completed', false, 'status', status,
      'reason', 'the claim is no longer held (lease expired or taken over)');
  END IF;

  EXECUTE format('SELECT %s($1, $2)', k.complete_function::regproc) INTO step USING done, completion;
  RETURN jsonb_build_object('completed', true) || coalesce(step, '{}');
END
$$;

-- Fail the claimed attempt (p_error: a non-empty reason, kept in the error history). Retryable: back to
-- 'pending' while attempts remain, with run_after the later of the backoff and p_retry_after_seconds (the
-- server's Retry-After, capped at an hour); else 'failed' with 'gave up after N attempts: ...'.
-- Permanent: 'failed' at once with p_error.
-- Returns {recorded: true, status, run_after, error} or {recorded: false, status, reason} when the claim
-- is no longer held.
CREATE OR REPLACE FUNCTION public.planbus_fail_request(
  p_kind text, p_request_id uuid, p_attempt int, p_error text, p_retryable boolean, p_max_attempts int,
  p_retry_after_seconds double precision DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  requests text := format('public.%I', (planbus_private.request_kind(p_kind)).table_name);
  retry boolean;
  backoff interval;
  asked interval;
  next_run timestamptz;
  basis text;
  r record;
  found_rows int;
  status text;
BEGIN
  PERFORM planbus_private.require(length(btrim(p_error)) > 0, 'p_error must be a non-empty reason');
  PERFORM planbus_private.require(p_retryable IS NOT NULL, 'p_retryable is required');
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');
  PERFORM planbus_private.require(
    p_retry_after_seconds IS NULL OR (p_retry_after_seconds >= 0 AND p_retry_after_seconds <> 'NaN'),
    'p_retry_after_seconds must be zero or more (or null)');

  -- The fence below holds attempts = p_attempt, so the schedule can be worked out first.
  retry := p_retryable AND p_attempt < p_max_attempts;
  IF retry THEN
    backoff := planbus_private.retry_delay(p_attempt);
    -- least() skips a NULL: without a Retry-After there is nothing to weigh against the backoff.
    IF p_retry_after_seconds IS NOT NULL THEN
      asked := make_interval(secs => least(p_retry_after_seconds, 3600));
    END IF;
    IF asked IS NULL OR asked <= backoff THEN
      basis := 'backoff';
    ELSIF p_retry_after_seconds > 3600 THEN
      basis := 'retry_after_capped';
    ELSE
      basis := 'retry_after';
    END IF;
    next_run := now() + greatest(backoff, asked);
  END IF;

  EXECUTE format($sql$
    UPDATE %s t
       SET status = CASE WHEN $4 THEN 'pending' ELSE 'failed' END,
           error = CASE
             WHEN $4 THEN NULL
             WHEN $5 THEN format('gave up after %%s attempts: %%s', t.attempts, $3)
             ELSE $3
           END,
           run_after = coalesce($6, t.run_after),
           lease_expires_at = NULL
     WHERE t.id = $1 AND t.status = 'processing' AND t.attempts = $2 AND t.lease_expires_at > now()
    RETURNING t.status, t.run_after, t.error$sql$, requests)
    INTO r USING p_request_id, p_attempt, p_error, retry, p_retryable, next_run;
  GET DIAGNOSTICS found_rows = ROW_COUNT;
  IF found_rows = 0 THEN
    EXECUTE format('SELECT status FROM %s WHERE id = $1', requests) INTO status USING p_request_id;
    RETURN jsonb_build_object('recorded', false, 'status', status,
      'reason', 'the claim is no longer held (lease expired or taken over)');
  END IF;
  PERFORM planbus_private.record_request_error(p_kind, p_request_id, p_attempt, p_error,
    next_run, basis, p_retry_after_seconds);
  RETURN jsonb_build_object('recorded', true, 'status', r.status, 'run_after', r.run_after, 'error', r.error);
END
$$;

-- Expired leases of a kind: back to 'pending' (claimable at once, found by planbus_find_lost_requests), or
-- 'failed' when no attempts remain. Rows another transaction holds are left for the next run.
-- Returns {reset: <back to pending>, failed: <failed for good>}.
CREATE OR REPLACE FUNCTION public.planbus_reset_stale_requests(p_kind text, p_max_attempts int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  requests text := format('public.%I', (planbus_private.request_kind(p_kind)).table_name);
  reset_count int;
  failed_count int;
BEGIN
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');
  EXECUTE format($sql$
    WITH stale AS (
      SELECT id FROM %1$s
       WHERE status = 'processing' AND lease_expires_at <= now()
       ORDER BY lease_expires_at
       FOR UPDATE SKIP LOCKED
    ), moved AS (
      UPDATE %1$s p
         SET status = CASE WHEN p.attempts >= $1 THEN 'failed' ELSE 'pending' END,
             error = CASE WHEN p.attempts >= $1
                          THEN format('gave up after %%s attempts: the lease expired before the worker finished', p.attempts)
                     END,
             run_after = now(),
             lease_expires_at = NULL
        FROM stale
       WHERE p.id = stale.id
      RETURNING p.id, p.status, p.attempts
    ), logged AS (
      INSERT INTO planbus_private.request_errors (kind, request_id, attempt, message)
      SELECT $2, id, attempts, format('lease expired during attempt %%s', attempts) FROM moved
    )
    SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed') FROM moved
    $sql$, requests)
    INTO reset_count, failed_count USING p_max_attempts, p_kind;
  RETURN jsonb_build_object('reset', reset_count, 'failed', failed_count);
END
$$;

-- Pending rows of a kind nobody is going to deliver: first attempts whose webhook is overdue by
-- p_grace_seconds, and retries whose backoff has passed (retries get no webhook). Oldest first.
-- Returns a JSON array (at most p_limit) of {id, attempt: the attempt a claim would start, run_after}.
CREATE OR REPLACE FUNCTION public.planbus_find_lost_requests(p_kind text, p_grace_seconds int, p_limit int)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  requests text := format('public.%I', (planbus_private.request_kind(p_kind)).table_name);
  lost jsonb;
BEGIN
  PERFORM planbus_private.require(p_grace_seconds >= 0, 'p_grace_seconds must be zero or more');
  PERFORM planbus_private.require(p_limit > 0, 'p_limit must be positive');
  EXECUTE format($sql$
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'attempt', attempts + 1, 'run_after', run_after)
                              ORDER BY run_after, id), '[]'::jsonb)
      FROM (
        SELECT id, attempts, run_after FROM %s
         WHERE status = 'pending'
           AND run_after <= now()
           AND (attempts > 0 OR run_after <= now() - make_interval(secs => $1))
         ORDER BY run_after, id
         LIMIT $2
      ) lost$sql$, requests)
    INTO lost USING p_grace_seconds, p_limit;
  RETURN lost;
END
$$;

-- Read-only: what a task for this request would find now, for a webhook that enqueues instead of claiming.
-- {dispatch: 'now', attempt} for a pending row whose time has come or a processing row whose lease expired
-- (a claim would take it over); {dispatch: 'later', attempt, run_at} for a pending row waiting for its
-- retry; {dispatch: 'skipped', reason} for a live lease, a finished row or an unknown id. `attempt` is the
-- attempt a claim would start (attempts + 1); `status` is the row's (null when unknown).
CREATE OR REPLACE FUNCTION public.planbus_dispatch_check(p_kind text, p_request_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  requests text := format('public.%I', (planbus_private.request_kind(p_kind)).table_name);
  r record;
  found_rows int;
BEGIN
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  EXECUTE format('SELECT status, attempts, run_after, lease_expires_at FROM %s WHERE id = $1', requests)
    INTO r USING p_request_id;
  GET DIAGNOSTICS found_rows = ROW_COUNT;
  IF found_rows = 0 THEN
    RETURN jsonb_build_object('dispatch', 'skipped', 'status', NULL, 'reason', 'unknown request');
  END IF;
  IF r.status IN ('completed', 'failed') THEN
    RETURN jsonb_build_object('dispatch', 'skipped', 'status', r.status, 'reason', 'already ' || r.status);
  END IF;
  IF r.status = 'processing' AND r.lease_expires_at > now() THEN
    RETURN jsonb_build_object('dispatch', 'skipped', 'status', r.status,
      'reason', format('held by another worker until %s', r.lease_expires_at));
  END IF;
  IF r.status = 'pending' AND r.run_after > now() THEN
    RETURN jsonb_build_object('dispatch', 'later', 'status', r.status, 'attempt', r.attempts + 1,
      'run_at', r.run_after, 'reason', format('retry scheduled at %s', r.run_after));
  END IF;
  RETURN jsonb_build_object('dispatch', 'now', 'status', r.status, 'attempt', r.attempts + 1,
    'reason', CASE WHEN r.status = 'processing' THEN 'the lease expired: a claim takes the row over' END);
END
$$;

-- A delivery's outcome as a function saw it (e.g. p_outcome 'enqueue_failed', p_detail the gRPC code and
-- message), kept in planbus_private.webhook_deliveries. Returns {recorded: true, id}.
CREATE OR REPLACE FUNCTION public.planbus_record_delivery(
  p_kind text, p_request_id uuid, p_channel text, p_outcome text, p_detail text
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  delivery bigint;
BEGIN
  PERFORM planbus_private.request_kind(p_kind);
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  PERFORM planbus_private.require(p_channel IN ('pg_net', 'cloud_tasks', 'relay'),
    'p_channel must be ''pg_net'', ''cloud_tasks'' or ''relay''');
  PERFORM planbus_private.require(length(btrim(p_outcome)) > 0, 'p_outcome must be a non-empty word');
  INSERT INTO planbus_private.webhook_deliveries (kind, request_id, channel, outcome, detail)
  VALUES (p_kind, p_request_id, p_channel, p_outcome, left(p_detail, 2000))
  RETURNING id INTO delivery;
  RETURN jsonb_build_object('recorded', true, 'id', delivery);
END
$$;

-- Remove what is past the retention period: delivered, cancelled and failed reminders; finished requests
-- of every kind that no reminder refers to any more (so a plan's history goes only once all its reminders
-- have gone; the error history goes with the request); the local outbox; webhook delivery records.
-- Returns {requests, reminders, outbox, deliveries}: the numbers of rows removed.
CREATE OR REPLACE FUNCTION public.planbus_prune(p_retention_days int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  cutoff timestamptz;
  k planbus_private.request_kinds;
  n int;
  reminders_pruned int;
  requests_pruned int := 0;
  outbox_pruned int;
  deliveries_pruned int;
BEGIN
  PERFORM planbus_private.require(p_retention_days > 0, 'p_retention_days must be positive');
  cutoff := now() - make_interval(days => p_retention_days);

  DELETE FROM public.reminders
   WHERE (status = 'sent' AND sent_at < cutoff)
      OR (status IN ('cancelled', 'failed') AND updated_at < cutoff);
  GET DIAGNOSTICS reminders_pruned = ROW_COUNT;

  FOR k IN SELECT * FROM planbus_private.request_kinds ORDER BY kind LOOP
    EXECUTE format($sql$
      DELETE FROM public.%I p
       WHERE p.status IN ('completed', 'failed') AND p.updated_at < $1
         AND NOT EXISTS (SELECT 1 FROM public.reminders m WHERE m.plan_request_id = p.id)$sql$, k.table_name)
      USING cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    requests_pruned := requests_pruned + n;
  END LOOP;

  DELETE FROM planbus_private.telegram_outbox WHERE created_at < cutoff;
  GET DIAGNOSTICS outbox_pruned = ROW_COUNT;
  DELETE FROM planbus_private.webhook_deliveries WHERE created_at < cutoff;
  GET DIAGNOSTICS deliveries_pruned = ROW_COUNT;

  RETURN jsonb_build_object('requests', requests_pruned, 'reminders', reminders_pruned,
                            'outbox', outbox_pruned, 'deliveries', deliveries_pruned);
END
$$;

-- -- the webhook -----------------------------------------------------------------------------------------

-- AFTER INSERT on every kind's table (TG_ARGV[0]: the kind). One payload in the Supabase database webhook
-- format, delivered by the first path this database has, as migration 0006 describes: pg_net to the kind's
-- URL (setting `webhook_url_<kind>`; for plans `webhook_url` as deployed before kinds existed), with the
-- post's pg_net request id kept in webhook_deliveries; realtime.publish (event `<kind>_request_inserted`);
-- else pg_notify('planbus_events'). The webhook is a hint: a failing path must not refuse the insert.
CREATE OR REPLACE FUNCTION planbus_private.send_request_webhook() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_kind text := TG_ARGV[0];
  payload jsonb := jsonb_build_object(
    'type', TG_OP,
    'table', TG_TABLE_NAME,
    'schema', TG_TABLE_SCHEMA,
    'record', to_jsonb(NEW),
    'old_record', NULL
  );
  url text;
  net_request bigint;
BEGIN
  BEGIN
    url := planbus_private.setting('webhook_url_' || of_kind);
    IF url IS NULL AND of_kind = 'plan' THEN
      url := planbus_private.setting('webhook_url');
    END IF;
    IF url IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_proc WHERE proname = 'http_post' AND pronamespace = to_regnamespace('net')) THEN
      EXECUTE 'SELECT net.http_post(url := $1, body := $2, headers := $3, timeout_milliseconds := $4)'
        INTO net_request
        USING url, payload,
              jsonb_build_object('Content-Type', 'application/json',
                                 'X-Webhook-Secret', coalesce(planbus_private.setting('webhook_secret'), '')),
              5000;
      INSERT INTO planbus_private.webhook_deliveries (kind, request_id, channel, net_request_id)
      VALUES (of_kind, NEW.id, 'pg_net', net_request);
    ELSIF EXISTS (
        SELECT 1 FROM pg_proc WHERE proname = 'publish' AND pronamespace = to_regnamespace('realtime')) THEN
      EXECUTE 'SELECT realtime.publish($1, $2, $3)'
        USING coalesce(planbus_private.setting('realtime_channel'), 'planbus'), of_kind || '_request_inserted', payload;
    ELSE
      PERFORM pg_notify('planbus_events', payload::text);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'planbus webhook for % request % not sent (the sweeper will pick it up): % (%)',
      of_kind, NEW.id, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$$;

-- -- the daily limit, per kind ---------------------------------------------------------------------------

-- The limit in force for a kind: the stored 'daily_<kind>_request_limit' setting, a count per user per UTC
-- day. 'unlimited' (NULL here) turns it off; 0 refuses every Mini App request of the kind (a pause).
-- Absent, not a number (written by hand), or unreadable (Vault failing), the kind's default applies: a
-- typo or an outage of the settings store must neither open the gate nor close it.
CREATE OR REPLACE FUNCTION planbus_private.daily_request_limit(p_kind text) RETURNS int
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  fallback int := (planbus_private.request_kind(p_kind)).daily_limit_default;
  v text;
BEGIN
  BEGIN
    v := lower(btrim(planbus_private.setting(format('daily_%s_request_limit', p_kind))));
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'daily_%_request_limit unreadable, the default applies: % (%)', p_kind, SQLERRM, SQLSTATE;
  END;
  IF v = 'unlimited' THEN
    RETURN NULL;
  ELSIF v ~ '^[0-9]{1,9}$' THEN
    RETURN v::int;
  END IF;
  RETURN fallback;
END
$$;

-- Whether inserts by this role into this table count against a limit: the roles row-level security
-- applies to (the Mini App's `authenticated`, and `anon`). Superusers, BYPASSRLS roles (service_role) and
-- the table's owner act for the operator, not for a Mini App user, and are not limited.
CREATE OR REPLACE FUNCTION planbus_private.daily_limit_applies_to(p_role text, p_table regclass) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT coalesce((
    SELECT NOT (r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, c.relowner, 'MEMBER'))
      FROM pg_roles r, pg_class c
     WHERE r.rolname = p_role AND c.oid = p_table
  ), true)
$$;

-- BEFORE INSERT on every kind's table (TG_ARGV[0]: the kind). One counter row per kind and Telegram user:
-- (the UTC day, requests accepted that day). Counting with an upsert takes the row lock, so concurrent
-- inserts of one user queue behind each other and each sees the count the previous one left, at any
-- isolation level (under REPEATABLE READ the second fails with a serialization error instead of slipping
-- past). A refused insert rolls its increment back. SECURITY DEFINER to reach the settings and counters,
-- so the caller is read from the `role` setting (what SET ROLE and PostgREST set).
CREATE OR REPLACE FUNCTION planbus_private.enforce_daily_request_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_kind text := TG_ARGV[0];
  caller text := coalesce(nullif(current_setting('role', true), 'none'), session_user);
  day_limit int;
  today date := (now() AT TIME ZONE 'UTC')::date;
  used int;
BEGIN
  IF NOT planbus_private.daily_limit_applies_to(caller, TG_RELID) THEN
    RETURN NEW;
  END IF;
  day_limit := planbus_private.daily_request_limit(of_kind);
  IF day_limit IS NULL THEN
    RETURN NEW;
  END IF;
  INSERT INTO planbus_private.daily_request_counts AS c (kind, telegram_id, day, requests)
  VALUES (of_kind, NEW.telegram_id, today, 1)
  ON CONFLICT (kind, telegram_id) DO UPDATE
     SET requests = CASE WHEN c.day = EXCLUDED.day THEN c.requests + 1 ELSE 1 END,
         day = EXCLUDED.day
  RETURNING c.requests INTO used;
  IF used > day_limit THEN
    RAISE EXCEPTION 'daily % request limit reached: % per user per day', of_kind, day_limit
      USING ERRCODE = 'PT429',
            DETAIL = format('%s requests were already made today (UTC)', used - 1),
            HINT = 'try again after midnight UTC';
  END IF;
  RETURN NEW;
END
$$;

-- A kind's limit and, for one user, today's use. Returns {limit, unlimited, stored, telegram_id?,
-- used_today?}: `limit` is the number in force (NULL when unlimited), `stored` the raw setting (NULL: the
-- kind's default).
CREATE OR REPLACE FUNCTION public.planbus_daily_request_limit(p_kind text, p_telegram_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  day_limit int := planbus_private.daily_request_limit(p_kind);
  answer jsonb := jsonb_build_object(
    'limit', day_limit,
    'unlimited', day_limit IS NULL,
    'stored', planbus_private.setting(format('daily_%s_request_limit', p_kind)));
BEGIN
  IF p_telegram_id IS NOT NULL THEN
    answer := answer || jsonb_build_object(
      'telegram_id', p_telegram_id,
      'used_today', coalesce((
        SELECT c.requests FROM planbus_private.daily_request_counts c
         WHERE c.kind = p_kind AND c.telegram_id = p_telegram_id
           AND c.day = (now() AT TIME ZONE 'UTC')::date), 0));
  END IF;
  RETURN answer;
END
$$;

-- Change a kind's limit: a count (0 pauses the Mini App's requests of that kind), or NULL for unlimited.
-- Takes effect on the next insert; requests already made today keep counting. Returns what
-- planbus_daily_request_limit does.
CREATE OR REPLACE FUNCTION public.planbus_set_daily_request_limit(p_kind text, p_limit int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM planbus_private.request_kind(p_kind);
  IF p_limit < 0 THEN
    RAISE EXCEPTION 'a daily limit is a count of requests, not %', p_limit USING ERRCODE = '22023';
  END IF;
  PERFORM public.planbus_store_setting(format('daily_%s_request_limit', p_kind), coalesce(p_limit::text, 'unlimited'));
  RETURN public.planbus_daily_request_limit(p_kind);
END
$$;

-- The plan-request limit as `planbus limits` and planbus_status have read it since migration 0007.
CREATE OR REPLACE FUNCTION public.planbus_daily_plan_request_limit(p_telegram_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT public.planbus_daily_request_limit('plan', p_telegram_id)
$$;

CREATE OR REPLACE FUNCTION public.planbus_set_daily_plan_request_limit(p_limit int) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT public.planbus_set_daily_request_limit('plan', p_limit)
$$;

-- -- registering a kind ----------------------------------------------------------------------------------

-- Register (or re-register) a kind: check that p_table has the request columns and p_complete_function
-- the completion step's signature, record it, and attach the shared triggers (updated_at, the daily limit,
-- the webhook, the error history's clean-up). The kind's migration creates the table, its indexes and its
-- row-level security, then calls this.
CREATE OR REPLACE FUNCTION planbus_private.register_request_kind(
  p_kind text, p_table text, p_complete_function regprocedure, p_daily_limit_default int
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  relation regclass := to_regclass(format('public.%I', p_table));
  missing text;
BEGIN
  PERFORM planbus_private.require(relation IS NOT NULL, format('no table public.%s', p_table));
  SELECT string_agg(format('%s %s', want.name, want.type), ', ' ORDER BY want.name) INTO missing
    FROM (VALUES ('id', 'uuid'), ('lead_id', 'uuid'), ('telegram_id', 'bigint'), ('status', 'text'),
                 ('result', 'jsonb'), ('error', 'text'), ('attempts', 'integer'),
                 ('run_after', 'timestamp with time zone'), ('lease_expires_at', 'timestamp with time zone'),
                 ('created_at', 'timestamp with time zone'), ('updated_at', 'timestamp with time zone'))
         AS want(name, type)
   WHERE NOT EXISTS (
     SELECT 1 FROM pg_attribute a
      WHERE a.attrelid = relation AND a.attname = want.name AND NOT a.attisdropped
        AND format_type(a.atttypid, a.atttypmod) = want.type);
  PERFORM planbus_private.require(missing IS NULL,
    format('public.%s lacks the request columns %s', p_table, missing));
  PERFORM planbus_private.require(EXISTS (
      SELECT 1 FROM pg_proc p
       WHERE p.oid = p_complete_function AND p.proargtypes = '3802 3802'::oidvector AND p.prorettype = 3802),
    format('%s must take (jsonb, jsonb) and return jsonb', p_complete_function));

  INSERT INTO planbus_private.request_kinds (kind, table_name, complete_function, daily_limit_default)
  VALUES (p_kind, p_table, p_complete_function, p_daily_limit_default)
  ON CONFLICT (kind) DO UPDATE
     SET table_name = EXCLUDED.table_name, complete_function = EXCLUDED.complete_function,
         daily_limit_default = EXCLUDED.daily_limit_default;

  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_table || '_touch', relation);
  EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON %s FOR EACH ROW '
                 'EXECUTE FUNCTION planbus_private.touch_updated_at()', p_table || '_touch', relation);
  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_table || '_daily_limit', relation);
  EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON %s FOR EACH ROW '
                 'EXECUTE FUNCTION planbus_private.enforce_daily_request_limit(%L)',
                 p_table || '_daily_limit', relation, p_kind);
  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_table || '_webhook', relation);
  EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW WHEN (NEW.status = ''pending'') '
                 'EXECUTE FUNCTION planbus_private.send_request_webhook(%L)', p_table || '_webhook', relation, p_kind);
  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_table || '_forget_errors', relation);
  EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS gone FOR EACH STATEMENT '
                 'EXECUTE FUNCTION planbus_private.forget_request_errors(%L)', p_table || '_forget_errors',
                 relation, p_kind);
END
$$;

-- -- the plan kind ---------------------------------------------------------------------------------------

-- The plan's completion step: update the lead (status 'plan_ready', plan, plan_generated_at,
-- plan_request_id), cancel the lead's still-scheduled reminders of older plans and schedule this plan's.
-- p_completion: {plan: the plan stored on the lead, reminders: an array of {step_index, due_at, text} with
-- distinct step_index values (may be empty or null)}.
-- Returns {reminders: <scheduled>, cancelled_reminders: <n>}.
CREATE OR REPLACE FUNCTION planbus_private.complete_plan_request(p_request jsonb, p_completion jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  request_id uuid := (p_request ->> 'id')::uuid;
  of_lead uuid := (p_request ->> 'lead_id')::uuid;
  new_plan jsonb := p_completion -> 'plan';
  schedule jsonb := coalesce(nullif(p_completion -> 'reminders', 'null'::jsonb), '[]'::jsonb);
  owner bigint;
  cancelled int;
  scheduled int;
BEGIN
  PERFORM planbus_private.require(new_plan IS NOT NULL AND jsonb_typeof(new_plan) <> 'null',
    'p_completion.plan is required');
  PERFORM planbus_private.check_reminders(schedule);

  UPDATE public.leads
     SET status = 'plan_ready', plan = new_plan, plan_generated_at = now(), plan_request_id = request_id
   WHERE id = of_lead
  RETURNING telegram_id INTO owner;

  UPDATE public.reminders
     SET status = 'cancelled', error = format('superseded by plan request %s', request_id)
   WHERE lead_id = of_lead AND status = 'scheduled' AND plan_request_id <> request_id;
  GET DIAGNOSTICS cancelled = ROW_COUNT;

  INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
  SELECT of_lead, owner, request_id, x.step_index, x.due_at, x.text
    FROM jsonb_to_recordset(schedule) AS x(step_index int, due_at timestamptz, text text);
  GET DIAGNOSTICS scheduled = ROW_COUNT;

  RETURN jsonb_build_object('reminders', scheduled, 'cancelled_reminders', cancelled);
END
$$;

-- plan_requests becomes the first registered kind; its history and counters move to the shared tables.
DROP TRIGGER IF EXISTS plan_requests_webhook ON public.plan_requests;
DROP TRIGGER IF EXISTS plan_requests_daily_limit ON public.plan_requests;
DROP FUNCTION IF EXISTS planbus_private.dispatch_plan_request();
DROP FUNCTION IF EXISTS planbus_private.enforce_daily_plan_request_limit();
DROP FUNCTION IF EXISTS planbus_private.daily_plan_request_limit();
DROP FUNCTION IF EXISTS planbus_private.daily_limit_applies_to(text);

SELECT planbus_private.register_request_kind(
  'plan', 'plan_requests', 'planbus_private.complete_plan_request(jsonb, jsonb)', 20);

INSERT INTO planbus_private.request_errors (kind, request_id, attempt, at, message)
SELECT 'plan', request_id, attempt, at, message FROM planbus_private.plan_request_errors ORDER BY id;
DROP TABLE planbus_private.plan_request_errors;

INSERT INTO planbus_private.daily_request_counts (kind, telegram_id, day, requests)
SELECT 'plan', telegram_id, day, requests FROM planbus_private.daily_plan_request_counts;
DROP TABLE planbus_private.daily_plan_request_counts;

-- planbus_status (migration 0008) as before, reading the plan kind's history from the shared table.
CREATE OR REPLACE FUNCTION public.planbus_status() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  day_ago timestamptz := now() - interval '24 hours';
  daily_limit jsonb;
  requests jsonb;
  failures jsonb;
  reminders jsonb;
BEGIN
  SELECT jsonb_build_object(
           'pending', count(*) FILTER (WHERE status = 'pending'),
           'processing', count(*) FILTER (WHERE status = 'processing'),
           'completed', count(*) FILTER (WHERE status = 'completed'),
           'failed', count(*) FILTER (WHERE status = 'failed'),
           'created_24h', count(*) FILTER (WHERE created_at >= day_ago),
           'waiting_retry', count(*) FILTER (WHERE status = 'pending' AND attempts > 0 AND run_after > now()),
           'stale', count(*) FILTER (WHERE status = 'processing' AND lease_expires_at <= now()),
           'oldest_pending_seconds',
             round(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 1))
    INTO requests
    FROM public.plan_requests;
  requests := requests || jsonb_build_object('oldest_pending_id', (
    SELECT id FROM public.plan_requests WHERE status = 'pending' ORDER BY created_at, id LIMIT 1));

  SELECT jsonb_build_object(
           'failed', (SELECT count(*) FROM public.plan_requests
                       WHERE status = 'failed' AND updated_at >= day_ago),
           'errors', (SELECT count(*) FROM planbus_private.request_errors WHERE kind = 'plan' AND at >= day_ago),
           'top_errors', coalesce((
             SELECT jsonb_agg(jsonb_build_object('error', message, 'count', n, 'last_at', last_at)
                              ORDER BY n DESC, last_at DESC)
               FROM (SELECT message, count(*) AS n, max(at) AS last_at
                       FROM planbus_private.request_errors
                      WHERE kind = 'plan' AND at >= day_ago
                      GROUP BY message
                      ORDER BY n DESC, last_at DESC
                      LIMIT 5) top), '[]'::jsonb))
    INTO failures;

  SELECT jsonb_build_object(
           'scheduled', count(*) FILTER (WHERE status = 'scheduled'),
           'sending', count(*) FILTER (WHERE status = 'sending'),
           'sent', count(*) FILTER (WHERE status = 'sent'),
           'cancelled', count(*) FILTER (WHERE status = 'cancelled'),
           'failed', count(*) FILTER (WHERE status = 'failed'),
           'due', count(*) FILTER (WHERE status = 'scheduled' AND due_at <= now()),
           'oldest_due_seconds',
             round(extract(epoch FROM now() - min(due_at) FILTER (WHERE status = 'scheduled' AND due_at <= now())), 1),
           'stuck', count(*) FILTER (WHERE status = 'sending' AND lease_expires_at <= now()),
           'sent_24h', count(*) FILTER (WHERE status = 'sent' AND sent_at >= day_ago),
           'failed_24h', count(*) FILTER (WHERE status = 'failed' AND updated_at >= day_ago))
    INTO reminders
    FROM public.reminders;

  daily_limit := public.planbus_daily_plan_request_limit() - 'telegram_id' - 'used_today';

  RETURN jsonb_build_object(
    'generated_at', now(),
    'requests', requests,
    'failures_24h', failures,
    'reminders', reminders,
    'limits', jsonb_build_object('daily_plan_request_limit', daily_limit));
END
$$;

SELECT planbus_private.secure_functions();
