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
-- The functions are SECURITY DEFINER and executable by service_role only (see the grants at the end).

CREATE OR REPLACE FUNCTION planbus_private.retry_delay(p_attempt int) RETURNS interval
LANGUAGE sql VOLATILE AS $$
  -- 5 s, 20 s, 80 s, ... capped at an hour, with +-10% jitter so retries of a burst spread out.
  SELECT make_interval(secs => least(3600, 5 * power(4, greatest(p_attempt, 1) - 1)) * (0.9 + random() * 0.2))
$$;

CREATE OR REPLACE FUNCTION planbus_private.record_request_error(p_request_id uuid, p_attempt int, p_message text)
RETURNS void
LANGUAGE sql AS $$
  INSERT INTO planbus_private.plan_request_errors (request_id, attempt, message)
  VALUES (p_request_id, p_attempt, left(p_message, 2000))
$$;

-- Claim one request by id: from 'pending' once its run_after has come, or from 'processing' whose lease
-- expired. Returns {claimed: true, attempt, request, lead} or {claimed: false, status, reason}.
CREATE OR REPLACE FUNCTION public.planbus_claim_request(
  p_request_id uuid, p_lease_seconds int, p_max_attempts int
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.plan_requests;
  l public.leads;
BEGIN
  UPDATE public.plan_requests
     SET status = 'processing',
         attempts = attempts + 1,
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         error = NULL
   WHERE id = p_request_id
     AND attempts < p_max_attempts
     AND ((status = 'pending' AND run_after <= now())
          OR (status = 'processing' AND lease_expires_at <= now()))
  RETURNING * INTO r;
  IF FOUND THEN
    SELECT * INTO l FROM public.leads WHERE id = r.lead_id;
    RETURN jsonb_build_object('claimed', true, 'attempt', r.attempts, 'request', to_jsonb(r), 'lead', to_jsonb(l));
  END IF;

  -- Out of attempts and claimable: the row is failed for good rather than left to loop.
  UPDATE public.plan_requests
     SET status = 'failed',
         lease_expires_at = NULL,
         error = format('gave up after %s attempts: the last attempt did not finish', attempts)
   WHERE id = p_request_id
     AND attempts >= p_max_attempts
     AND ((status = 'pending' AND run_after <= now())
          OR (status = 'processing' AND lease_expires_at <= now()))
  RETURNING * INTO r;
  IF FOUND THEN
    PERFORM planbus_private.record_request_error(r.id, r.attempts, r.error);
    RETURN jsonb_build_object('claimed', false, 'status', r.status, 'reason', r.error);
  END IF;

  SELECT * INTO r FROM public.plan_requests WHERE id = p_request_id;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('claimed', false, 'status', NULL, 'reason', 'unknown request');
  END IF;
  RETURN jsonb_build_object(
    'claimed', false,
    'status', r.status,
    'reason', CASE
      WHEN r.status = 'completed' THEN 'already completed'
      WHEN r.status = 'failed' THEN 'already failed'
      WHEN r.status = 'processing' THEN format('held by another worker until %s', r.lease_expires_at)
      ELSE format('retry scheduled at %s', r.run_after)
    END
  );
END
$$;

-- Complete the claimed attempt: store the result, update the lead, replace the lead's scheduled reminders
-- with the new plan's, all in this one transaction. p_reminders: [{step_index, due_at, text}, ...].
CREATE OR REPLACE FUNCTION public.planbus_complete_request(
  p_request_id uuid, p_attempt int, p_result jsonb, p_plan jsonb, p_reminders jsonb
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.plan_requests;
  owner bigint;
  cancelled int;
  scheduled int;
BEGIN
  UPDATE public.plan_requests
     SET status = 'completed', result = p_result, error = NULL, lease_expires_at = NULL
   WHERE id = p_request_id AND status = 'processing' AND attempts = p_attempt AND lease_expires_at > now()
  RETURNING * INTO r;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('completed', false, 'reason', 'the claim is no longer held (lease expired or taken over)');
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
    FROM jsonb_to_recordset(coalesce(p_reminders, '[]')) AS x(step_index int, due_at timestamptz, text text)
  ON CONFLICT (plan_request_id, step_index) DO NOTHING;
  GET DIAGNOSTICS scheduled = ROW_COUNT;

  RETURN jsonb_build_object('completed', true, 'reminders', scheduled, 'cancelled_reminders', cancelled);
END
$$;

-- Fail the claimed attempt. Retryable: back to 'pending' after a backoff while attempts remain, else
-- 'failed'. Permanent: 'failed' at once. Returns {recorded, status, run_after}.
CREATE OR REPLACE FUNCTION public.planbus_fail_request(
  p_request_id uuid, p_attempt int, p_error text, p_retryable boolean, p_max_attempts int
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.plan_requests;
  retry boolean;
BEGIN
  SELECT * INTO r FROM public.plan_requests
   WHERE id = p_request_id AND status = 'processing' AND attempts = p_attempt AND lease_expires_at > now()
   FOR UPDATE;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('recorded', false, 'reason', 'the claim is no longer held (lease expired or taken over)');
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

-- Expired leases: back to 'pending' (claimable at once), or 'failed' when no attempts remain.
CREATE OR REPLACE FUNCTION public.planbus_reset_stale_requests(p_max_attempts int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  reset_count int;
  failed_count int;
BEGIN
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
-- and retries whose backoff has passed. Oldest first.
CREATE OR REPLACE FUNCTION public.planbus_find_lost_requests(p_grace_seconds int, p_limit int) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT coalesce(jsonb_agg(id ORDER BY run_after), '[]'::jsonb)
    FROM (
      SELECT id, run_after FROM public.plan_requests
       WHERE status = 'pending'
         AND run_after <= now()
         AND (attempts > 0 OR run_after <= now() - make_interval(secs => p_grace_seconds))
       ORDER BY run_after
       LIMIT p_limit
    ) lost
$$;

-- Remove finished requests and delivered reminders older than the retention period. A request whose
-- reminders are still to be sent is kept.
CREATE OR REPLACE FUNCTION public.planbus_prune(p_retention_days int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  cutoff timestamptz := now() - make_interval(days => p_retention_days);
  reminders_pruned int;
  requests_pruned int;
  outbox_pruned int;
BEGIN
  DELETE FROM public.reminders
   WHERE (status = 'sent' AND sent_at < cutoff)
      OR (status IN ('cancelled', 'failed') AND updated_at < cutoff);
  GET DIAGNOSTICS reminders_pruned = ROW_COUNT;

  DELETE FROM public.plan_requests p
   WHERE p.status IN ('completed', 'failed') AND p.updated_at < cutoff
     AND NOT EXISTS (
       SELECT 1 FROM public.reminders m
        WHERE m.plan_request_id = p.id AND m.status IN ('scheduled', 'sending'));
  GET DIAGNOSTICS requests_pruned = ROW_COUNT;

  DELETE FROM planbus_private.telegram_outbox WHERE created_at < cutoff;
  GET DIAGNOSTICS outbox_pruned = ROW_COUNT;

  RETURN jsonb_build_object('requests', requests_pruned, 'reminders', reminders_pruned, 'outbox', outbox_pruned);
END
$$;
