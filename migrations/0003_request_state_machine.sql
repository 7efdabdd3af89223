-- The plan_requests state machine. Every transition is one function; Python never writes a status itself.
--
--   pending --claim--> processing --complete--> completed
--      ^                   |  \--fail(permanent, or retryable on the last attempt)--> failed
--      |                   |
--      +--fail(retryable)--+   (run_after = now() + backoff)
--      +--reset_stale------+   (lease expired; failed instead once attempts reach max_attempts)
--
-- A claim increments `attempts` and sets a lease. Completion and failure are fenced on
-- (status = 'processing', attempts = the claim's attempt, lease not expired): a worker whose claim went
-- stale, or was taken over, can no longer write anything.
-- Arguments that make no sense (a lease of 0 s, a result that is not an object, ...) raise SQLSTATE 22023
-- with a message naming the argument, and change nothing.
-- The functions are SECURITY DEFINER and executable by service_role only (see the grants at the end).

CREATE OR REPLACE FUNCTION planbus_private.retry_delay(p_attempt int) RETURNS interval
LANGUAGE sql VOLATILE AS $$
  -- 5 s, 20 s, 80 s, ... capped at an hour, with +-10% jitter so retries of a burst spread out.
  -- The exponent is capped too: 4^n overflows double precision long before n reaches a large attempt.
  SELECT make_interval(secs => least(3600, 5 * power(4, least(greatest(p_attempt, 1) - 1, 10)))
                               * (0.9 + random() * 0.2))
$$;

CREATE OR REPLACE FUNCTION planbus_private.record_request_error(p_request_id uuid, p_attempt int, p_message text)
RETURNS void
LANGUAGE sql AS $$
  INSERT INTO planbus_private.plan_request_errors (request_id, attempt, message)
  VALUES (p_request_id, p_attempt, left(p_message, 2000))
$$;

CREATE OR REPLACE FUNCTION planbus_private.require(p_ok boolean, p_message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF p_ok IS NOT TRUE THEN
    RAISE EXCEPTION '%', p_message USING ERRCODE = '22023';
  END IF;
END
$$;

-- A plan's reminder schedule: an array of {step_index: integer >= 0, due_at: timestamp, text: non-empty},
-- step_index distinct. Checked element by element so the message names the offending one.
CREATE OR REPLACE FUNCTION planbus_private.check_reminders(p_reminders jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  item jsonb;
  position int := 0;
  seen int[] := '{}';
  step numeric;
BEGIN
  PERFORM planbus_private.require(jsonb_typeof(p_reminders) = 'array', 'p_reminders must be a JSON array');
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

-- Claim one request by id: from 'pending' once its run_after has come, or from 'processing' whose lease
-- expired (the lost attempt is written to the error history). A claimable row that has used all its
-- attempts is failed for good instead.
-- Returns {claimed: true, attempt, request, lead} or {claimed: false, status, reason}; status is null for
-- an unknown id.
CREATE OR REPLACE FUNCTION public.planbus_claim_request(
  p_request_id uuid, p_lease_seconds int, p_max_attempts int
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.plan_requests;
  l public.leads;
BEGIN
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  PERFORM planbus_private.require(p_lease_seconds > 0, 'p_lease_seconds must be positive');
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');

  -- The row lock serialises concurrent claimers: the second one waits, then sees the first one's claim.
  SELECT * INTO r FROM public.plan_requests WHERE id = p_request_id FOR UPDATE;
  IF NOT FOUND THEN
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
    PERFORM planbus_private.record_request_error(r.id, r.attempts,
      format('lease expired during attempt %s', r.attempts));
  END IF;

  IF r.attempts >= p_max_attempts THEN
    UPDATE public.plan_requests
       SET status = 'failed',
           lease_expires_at = NULL,
           error = format('gave up after %s attempts: %s', attempts, CASE
             WHEN status = 'processing' THEN 'the lease expired before the worker finished'
             ELSE 'no attempts left' END)
     WHERE id = r.id
    RETURNING * INTO r;
    PERFORM planbus_private.record_request_error(r.id, r.attempts, r.error);
    RETURN jsonb_build_object('claimed', false, 'status', r.status, 'reason', r.error);
  END IF;

  UPDATE public.plan_requests
     SET status = 'processing',
         attempts = attempts + 1,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         error = NULL
   WHERE id = r.id
  RETURNING * INTO r;
  SELECT * INTO l FROM public.leads WHERE id = r.lead_id;
  RETURN jsonb_build_object('claimed', true, 'attempt', r.attempts, 'request', to_jsonb(r), 'lead', to_jsonb(l));
END
$$;

-- Complete the claimed attempt: store the result, update the lead (status 'plan_ready', plan,
-- plan_generated_at, plan_request_id), cancel the lead's still-scheduled reminders of older plans and
-- schedule this plan's, all in this one transaction.
-- p_result: a JSON object; p_plan: the plan stored on the lead; p_reminders: an array of
-- {step_index, due_at, text} with distinct step_index values (may be empty or null).
-- Returns {completed: true, reminders: <scheduled>, cancelled_reminders: <n>} or
-- {completed: false, status, reason} when the claim is no longer held (nothing is written then).
CREATE OR REPLACE FUNCTION public.planbus_complete_request(
  p_request_id uuid, p_attempt int, p_result jsonb, p_plan jsonb, p_reminders jsonb
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.plan_requests;
  owner bigint;
  cancelled int;
  scheduled int;
  reminders jsonb := coalesce(p_reminders, '[]'::jsonb);
BEGIN
  PERFORM planbus_private.require(jsonb_typeof(p_result) = 'object', 'p_result must be a JSON object');
  PERFORM planbus_private.require(p_plan IS NOT NULL AND jsonb_typeof(p_plan) <> 'null', 'p_plan is required');
  PERFORM planbus_private.check_reminders(reminders);

  UPDATE public.plan_requests
     SET status = 'completed', result = p_result, error = NULL, lease_expires_at = NULL
   WHERE id = p_request_id AND status = 'processing' AND attempts = p_attempt AND lease_expires_at > now()
  RETURNING * INTO r;
  IF NOT FOUND THEN
    SELECT * INTO r FROM public.plan_requests WHERE id = p_request_id;
    RETURN jsonb_build_object('completed', false, 'status', r.status,
      'reason', 'the claim is no longer held (lease expired or taken over)');
  END IF;

  UPDATE public.leads
     SET status = 'plan_ready', plan = p_plan, plan_generated_at = now(), plan_request_id = r.id
   WHERE id = r.lead_id
  RETURNING telegram_id INTO owner;

  UPDATE public.reminders
     SET status = 'cancelled', error = format('superseded by plan request %s', r.id)
   WHERE lead_id = r.lead_id AND status = 'scheduled' AND plan_request_id <> r.id;
  GET DIAGNOSTICS cancelled = ROW_COUNT;

  INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
  SELECT r.lead_id, owner, r.id, x.step_index, x.due_at, x.text
    FROM jsonb_to_recordset(reminders) AS x(step_index int, due_at timestamptz, text text);
  GET DIAGNOSTICS scheduled = ROW_COUNT;

  RETURN jsonb_build_object('completed', true, 'reminders', scheduled, 'cancelled_reminders', cancelled);
END
$$;

-- Fail the claimed attempt (p_error: a non-empty reason, kept in the error history). Retryable: back to
-- 'pending' after a backoff while attempts remain, else 'failed' with 'gave up after N attempts: ...'.
-- Permanent: 'failed' at once with p_error.
-- Returns {recorded: true, status, run_after, error} or {recorded: false, status, reason} when the claim
-- is no longer held.
CREATE OR REPLACE FUNCTION public.planbus_fail_request(
  p_request_id uuid, p_attempt int, p_error text, p_retryable boolean, p_max_attempts int
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.plan_requests;
  retry boolean;
BEGIN
  PERFORM planbus_private.require(length(btrim(p_error)) > 0, 'p_error must be a non-empty reason');
  PERFORM planbus_private.require(p_retryable IS NOT NULL, 'p_retryable is required');
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');

  SELECT * INTO r FROM public.plan_requests
   WHERE id = p_request_id AND status = 'processing' AND attempts = p_attempt AND lease_expires_at > now()
   FOR UPDATE;
  IF NOT FOUND THEN
    SELECT * INTO r FROM public.plan_requests WHERE id = p_request_id;
    RETURN jsonb_build_object('recorded', false, 'status', r.status,
      'reason', 'the claim is no longer held (lease expired or taken over)');
  END IF;
  retry := p_retryable AND r.attempts < p_max_attempts;
  UPDATE public.plan_requests
     SET status = CASE WHEN retry THEN 'pending' ELSE 'failed' END,
         error = CASE
           WHEN retry THEN NULL
           WHEN p_retryable THEN format('gave up after %s attempts: %s', r.attempts, p_error)
           ELSE p_error
         END,
         run_after = CASE WHEN retry THEN now() + planbus_private.retry_delay(r.attempts) ELSE run_after END,
         lease_expires_at = NULL
   WHERE id = r.id
  RETURNING * INTO r;
  PERFORM planbus_private.record_request_error(r.id, r.attempts, p_error);
  RETURN jsonb_build_object('recorded', true, 'status', r.status, 'run_after', r.run_after, 'error', r.error);
END
$$;

-- Expired leases: back to 'pending' (claimable at once, found by planbus_find_lost_requests), or 'failed'
-- when no attempts remain. Rows another transaction holds are left for the next run.
-- Returns {reset: <back to pending>, failed: <failed for good>}.
CREATE OR REPLACE FUNCTION public.planbus_reset_stale_requests(p_max_attempts int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  reset_count int;
  failed_count int;
BEGIN
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');
  WITH stale AS (
    SELECT id FROM public.plan_requests
     WHERE status = 'processing' AND lease_expires_at <= now()
     ORDER BY lease_expires_at
     FOR UPDATE SKIP LOCKED
  ), moved AS (
    UPDATE public.plan_requests p
       SET status = CASE WHEN p.attempts >= p_max_attempts THEN 'failed' ELSE 'pending' END,
           error = CASE WHEN p.attempts >= p_max_attempts
                        THEN format('gave up after %s attempts: the lease expired before the worker finished', p.attempts)
                   END,
           run_after = now(),
           lease_expires_at = NULL
      FROM stale
     WHERE p.id = stale.id
    RETURNING p.id, p.status, p.attempts
  ), logged AS (
    INSERT INTO planbus_private.plan_request_errors (request_id, attempt, message)
    SELECT id, attempts, format('lease expired during attempt %s', attempts) FROM moved
  )
  SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed')
    INTO reset_count, failed_count
    FROM moved;
  RETURN jsonb_build_object('reset', reset_count, 'failed', failed_count);
END
$$;

-- Pending rows nobody is going to deliver: first attempts whose webhook is overdue by p_grace_seconds,
-- and retries whose backoff has passed (retries get no webhook). Oldest first.
-- Returns a JSON array of request ids (at most p_limit).
CREATE OR REPLACE FUNCTION public.planbus_find_lost_requests(p_grace_seconds int, p_limit int) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM planbus_private.require(p_grace_seconds >= 0, 'p_grace_seconds must be zero or more');
  PERFORM planbus_private.require(p_limit > 0, 'p_limit must be positive');
  RETURN (
    SELECT coalesce(jsonb_agg(id ORDER BY run_after, id), '[]'::jsonb)
      FROM (
        SELECT id, run_after FROM public.plan_requests
         WHERE status = 'pending'
           AND run_after <= now()
           AND (attempts > 0 OR run_after <= now() - make_interval(secs => p_grace_seconds))
         ORDER BY run_after, id
         LIMIT p_limit
      ) lost
  );
END
$$;

-- Remove what is past the retention period: delivered, cancelled and failed reminders; finished requests
-- that no longer have any reminder (so a plan's history goes only once all its reminders have gone; the
-- error history goes with the request); the local outbox.
-- Returns {requests, reminders, outbox}: the numbers of rows removed.
CREATE OR REPLACE FUNCTION public.planbus_prune(p_retention_days int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  cutoff timestamptz;
  reminders_pruned int;
  requests_pruned int;
  outbox_pruned int;
BEGIN
  PERFORM planbus_private.require(p_retention_days > 0, 'p_retention_days must be positive');
  cutoff := now() - make_interval(days => p_retention_days);

  DELETE FROM public.reminders
   WHERE (status = 'sent' AND sent_at < cutoff)
      OR (status IN ('cancelled', 'failed') AND updated_at < cutoff);
  GET DIAGNOSTICS reminders_pruned = ROW_COUNT;

  DELETE FROM public.plan_requests p
   WHERE p.status IN ('completed', 'failed') AND p.updated_at < cutoff
     AND NOT EXISTS (SELECT 1 FROM public.reminders m WHERE m.plan_request_id = p.id);
  GET DIAGNOSTICS requests_pruned = ROW_COUNT;

  DELETE FROM planbus_private.telegram_outbox WHERE created_at < cutoff;
  GET DIAGNOSTICS outbox_pruned = ROW_COUNT;

  RETURN jsonb_build_object('requests', requests_pruned, 'reminders', reminders_pruned, 'outbox', outbox_pruned);
END
$$;
