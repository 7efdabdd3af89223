-- The per-kind claim and completion of migration 0018, each finding its row by the primary key whatever
-- the statistics say.
--   claim, complete   their UPDATE named the row by id and tested its state in the same WHERE
--                     (status = 'pending' AND run_after <= now(), status = 'processing' AND lease_expires_at
--                     > now()). Those tests are exactly the predicates of the partial indexes
--                     plan_requests_pending_run_after and plan_requests_processing_lease (and the draft
--                     table's), so the planner may read the row through one of them instead of the primary
--                     key. PL/pgSQL keeps a generic plan after five calls, costed without the id: with the
--                     statistics of a quiet moment (no processing rows, or no pending ones), the partial
--                     index looks smaller than the primary key, and every later call walks all processing
--                     (or all due pending) rows to find one. The state tests are now one condition `(...)
--                     IS TRUE`, which the planner cannot match to an index predicate, so the primary key
--                     is the only index left; a row passes exactly when it passed before (a WHERE keeps a
--                     row only when its condition is true).
-- The rest of both functions, their fencing, messages and SQLSTATEs are 0018's, unchanged; the generator
-- of 0018 makes every registered kind's pair again from these sources.

-- The claim of one kind, as planbus_claim_request of migration 0009 describes it. %1$s: the table,
-- %2$L: the kind. Not SECURITY DEFINER: only the generated planbus_claim_request calls it, as its owner
-- and with its search_path (every name below is qualified anyway).
CREATE OR REPLACE FUNCTION planbus_private.claim_function_source(p_kind text, p_table text) RETURNS text
LANGUAGE sql IMMUTABLE AS $gen$
SELECT format($src$
CREATE OR REPLACE FUNCTION planbus_private.%3$I(p_request_id uuid, p_lease_seconds int, p_max_attempts int)
RETURNS jsonb
LANGUAGE plpgsql AS $body$
DECLARE
  answer jsonb;
  r record;
  reason text;
BEGIN
  IF p_request_id IS NULL THEN
    RAISE EXCEPTION 'p_request_id is required' USING ERRCODE = '22023';
  END IF;
  IF (p_lease_seconds > 0) IS NOT TRUE THEN
    RAISE EXCEPTION 'p_lease_seconds must be positive' USING ERRCODE = '22023';
  END IF;
  IF (p_max_attempts > 0) IS NOT TRUE THEN
    RAISE EXCEPTION 'p_max_attempts must be positive' USING ERRCODE = '22023';
  END IF;

  -- The common case in one statement: a pending row whose time has come, with its lead. Concurrent
  -- claimers queue on the row lock; each later one re-checks this condition against the winner's update
  -- and falls through.
  WITH claimed AS (
    UPDATE %1$s t
       SET status = 'processing', attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds), error = NULL
     -- One condition, so no partial index over the pending rows can stand in for the primary key.
     WHERE t.id = p_request_id
       AND (t.status = 'pending' AND t.run_after <= now() AND t.attempts < p_max_attempts) IS TRUE
    RETURNING t.*)
  SELECT jsonb_build_object('claimed', true, 'attempt', c.attempts, 'request', to_jsonb(c),
                            'lead', (SELECT to_jsonb(l) FROM public.leads l WHERE l.id = c.lead_id))
    INTO answer FROM claimed c;
  IF answer IS NOT NULL THEN
    RETURN answer;
  END IF;

  -- The row lock serialises the slower paths too: the second claimer waits, then sees the first's claim.
  SELECT id, status, attempts, run_after, lease_expires_at INTO r FROM %1$s WHERE id = p_request_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('claimed', false, 'status', NULL, 'reason', 'unknown request');
  END IF;
  IF r.status IN ('completed', 'failed') THEN
    RETURN jsonb_build_object('claimed', false, 'status', r.status, 'reason', 'already ' || r.status);
  END IF;
  IF r.status = 'processing' AND r.lease_expires_at > now() THEN
    RETURN jsonb_build_object('claimed', false, 'status', r.status,
      'reason', format('held by another worker until %%s', r.lease_expires_at));
  END IF;
  IF r.status = 'pending' AND r.run_after > now() THEN
    RETURN jsonb_build_object('claimed', false, 'status', r.status,
      'reason', format('retry scheduled at %%s', r.run_after));
  END IF;

  -- A takeover: the attempt that held the lease never reported back. It goes into the error history.
  IF r.status = 'processing' THEN
    PERFORM planbus_private.record_request_error(%2$L, r.id, r.attempts,
      format('lease expired during attempt %%s', r.attempts));
  END IF;

  IF r.attempts >= p_max_attempts THEN
    reason := format('gave up after %%s attempts: %%s', r.attempts, CASE
      WHEN r.status = 'processing' THEN 'the lease expired before the worker finished'
      ELSE 'no attempts left' END);
    UPDATE %1$s SET status = 'failed', lease_expires_at = NULL, error = reason WHERE id = r.id;
    PERFORM planbus_private.record_request_error(%2$L, r.id, r.attempts, reason);
    RETURN jsonb_build_object('claimed', false, 'status', 'failed', 'reason', reason);
  END IF;

  WITH claimed AS (
    UPDATE %1$s t
       SET status = 'processing', attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds), error = NULL
     WHERE t.id = r.id
    RETURNING t.*)
  SELECT jsonb_build_object('claimed', true, 'attempt', c.attempts, 'request', to_jsonb(c),
                            'lead', (SELECT to_jsonb(l) FROM public.leads l WHERE l.id = c.lead_id))
    INTO answer FROM claimed c;
  RETURN answer;
END
$body$
$src$, format('public.%I', p_table), p_kind, 'kind_claim_' || p_kind)
$gen$;

-- The completion of one kind, as planbus_complete_request of migration 0009 describes it, with the kind's
-- completion step called by name. %1$s: the table, %2$s: the step, %3$I: the function.
CREATE OR REPLACE FUNCTION planbus_private.complete_function_source(p_kind text, p_table text, p_step regprocedure)
RETURNS text
LANGUAGE sql STABLE AS $gen$
SELECT format($src$
CREATE OR REPLACE FUNCTION planbus_private.%3$I(
  p_request_id uuid, p_attempt int, p_result jsonb, p_completion jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $body$
DECLARE
  completion jsonb := coalesce(p_completion, '{}');
  done jsonb;
  now_status text;
BEGIN
  IF (jsonb_typeof(p_result) = 'object') IS NOT TRUE THEN
    RAISE EXCEPTION 'p_result must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF (jsonb_typeof(completion) = 'object') IS NOT TRUE THEN
    RAISE EXCEPTION 'p_completion must be a JSON object' USING ERRCODE = '22023';
  END IF;

  UPDATE %1$s t
     SET status = 'completed', result = p_result, error = NULL, lease_expires_at = NULL
   -- One condition, so no partial index over the processing rows can stand in for the primary key.
   WHERE t.id = p_request_id
     AND (t.status = 'processing' AND t.attempts = p_attempt AND t.lease_expires_at > now()) IS TRUE
  RETURNING to_jsonb(t) INTO done;
  IF done IS NULL THEN
    SELECT t.status INTO now_status FROM %1$s t WHERE t.id = p_request_id;
    RETURN jsonb_build_object('completed', false, 'status', now_status,
      'reason', 'the claim is no longer held (lease expired or taken over)');
  END IF;

  RETURN jsonb_build_object('completed', true) || coalesce(%2$s(done, completion), '{}');
END
$body$
$src$, format('public.%I', p_table), p_step::regproc, 'kind_complete_' || p_kind)
$gen$;

SELECT planbus_private.generate_request_transitions();
