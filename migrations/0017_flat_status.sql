-- planbus_status and the due-reminder claim, flat with the size of the history.
--
-- planbus_status (the 0008/0009 sections, which 0013 wraps as planbus_private.status_sections) counted
-- whole tables: every request and every reminder ever made was read once a minute by an uptime check.
-- Each section now reads only what is bounded:
--   active rows     pending / processing requests and scheduled / sending reminders, through their
--                   partial indexes (their number is the queue, not the history);
--   the last 24 h   index range scans over the time columns, most of them index-only, through the
--                   partial indexes below: what they read grows with the day's traffic, not with history;
--   totals          completed and failed requests, sent, cancelled and failed reminders (the history
--                   itself): exact up to 1 000 rows of a state, the planner's estimate beyond (see
--                   status_total). Nothing the contract names is a total of all history: it names queue
--                   depth, the oldest pending age, stale rows and the last day's failures, all exact.
-- The shape of the answer is unchanged.
--
-- The indexes are partial, over states a row reaches once (a failure, a cancellation) or over finished
-- rows only: inserting or claiming a request or a reminder maintains none of them, finishing one adds an
-- entry to one or two. Migrations run in one transaction, so the indexes are built while their table is
-- locked against writes: on a database with a long history, apply this migration in a quiet moment.

CREATE INDEX IF NOT EXISTS plan_requests_failed_updated_at
  ON public.plan_requests (updated_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS plan_requests_finished_created_at
  ON public.plan_requests (created_at) WHERE status IN ('completed', 'failed');
CREATE INDEX IF NOT EXISTS reminders_failed_updated_at
  ON public.reminders (updated_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS reminders_cancelled_updated_at
  ON public.reminders (updated_at) WHERE status = 'cancelled';

-- How many rows of p_table are in p_status: the exact number while it is below p_bound, read through the
-- partial index on that state; from p_bound on, the planner's estimate, at least p_bound (from the
-- statistics autovacuum's ANALYZE keeps, scaled by the table's growth since). The estimate comes first:
-- where it puts the state at twice p_bound or more, nothing is counted (a state most of a long history is
-- in, such as completed, has no index of its own, and counting its first rows would read the table).
-- So the cost is at most that of p_bound rows whatever the history holds.
-- VOLATILE only because EXPLAIN is a utility statement, which a STABLE function may not run.
CREATE OR REPLACE FUNCTION planbus_private.status_total(p_table regclass, p_status text, p_bound int)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  plan jsonb;
  estimate bigint;
  exact bigint;
BEGIN
  EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM %s WHERE status = %L', p_table, p_status) INTO plan;
  estimate := round((plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric);
  IF estimate < 2 * p_bound THEN
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s WHERE status = %L LIMIT %s) x',
                   p_table, p_status, p_bound)
      INTO exact;
    IF exact < p_bound THEN
      RETURN exact;
    END IF;
  END IF;
  RETURN greatest(p_bound, estimate);
END
$$;

-- The 0009 sections of planbus_status, same keys and meanings, each read from bounded rows:
--   requests:     pending, processing, waiting_retry, stale, oldest_pending_seconds / _id from the
--                 active rows (the partial unique index over pending and processing rows);
--                 created_24h from those plus the finished rows created in the last day;
--                 completed, failed: totals, exact below 1 000, estimated from there (status_total).
--   failures_24h: failed requests, attempt errors and the five most frequent errors of the last 24 h,
--                 from the index on a failure's updated_at and the error history's index on `at`.
--   reminders:    scheduled, due, oldest_due_seconds, sending, stuck from the active rows; sent_24h,
--                 failed_24h from the indexes on sent_at and on a failure's updated_at; sent, cancelled,
--                 failed: totals as above.
--   limits:       as before.
-- STABLE: every statement here sees the one snapshot, so a row moving on meanwhile is counted once (the
-- totals, read by a VOLATILE helper, may be a moment younger).
CREATE OR REPLACE FUNCTION planbus_private.status_sections() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  exact_below constant int := 1000;
  day_ago timestamptz := now() - interval '24 hours';
  active_created_24h bigint;
  requests jsonb;
  failures jsonb;
  scheduled jsonb;
  sending jsonb;
  reminders jsonb;
  daily_limit jsonb;
BEGIN
  SELECT jsonb_build_object(
           'pending', count(*) FILTER (WHERE status = 'pending'),
           'processing', count(*) FILTER (WHERE status = 'processing'),
           'waiting_retry', count(*) FILTER (WHERE status = 'pending' AND attempts > 0 AND run_after > now()),
           'stale', count(*) FILTER (WHERE status = 'processing' AND lease_expires_at <= now()),
           'oldest_pending_seconds',
             round(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 1)),
         count(*) FILTER (WHERE created_at >= day_ago)
    INTO requests, active_created_24h
    FROM public.plan_requests
   WHERE status IN ('pending', 'processing');
  requests := requests || jsonb_build_object(
    'oldest_pending_id', (SELECT id FROM public.plan_requests WHERE status = 'pending'
                           ORDER BY created_at, id LIMIT 1),
    -- A finished row was created before it finished, so those created in the window finished in it too.
    'created_24h', active_created_24h + (SELECT count(*) FROM public.plan_requests
                                          WHERE status IN ('completed', 'failed') AND created_at >= day_ago),
    'completed', planbus_private.status_total('public.plan_requests', 'completed', exact_below),
    'failed', planbus_private.status_total('public.plan_requests', 'failed', exact_below));

  SELECT jsonb_build_object(
           'failed', (SELECT count(*) FROM public.plan_requests WHERE status = 'failed' AND updated_at >= day_ago),
           'errors', coalesce(sum(n), 0),
           'top_errors', coalesce(jsonb_agg(jsonb_build_object('error', message, 'count', n, 'last_at', last_at)
                                            ORDER BY n DESC, last_at DESC) FILTER (WHERE place <= 5), '[]'::jsonb))
    INTO failures
    FROM (SELECT message, count(*) AS n, max(at) AS last_at,
                 row_number() OVER (ORDER BY count(*) DESC, max(at) DESC) AS place
            FROM planbus_private.request_errors
           WHERE kind = 'plan' AND at >= day_ago
           GROUP BY message) by_message;

  SELECT jsonb_build_object(
           'scheduled', count(*),
           'due', count(*) FILTER (WHERE due_at <= now()),
           'oldest_due_seconds', round(extract(epoch FROM now() - min(due_at) FILTER (WHERE due_at <= now())), 1))
    INTO scheduled
    FROM public.reminders WHERE status = 'scheduled';
  SELECT jsonb_build_object('sending', count(*), 'stuck', count(*) FILTER (WHERE lease_expires_at <= now()))
    INTO sending
    FROM public.reminders WHERE status = 'sending';
  reminders := scheduled || sending || jsonb_build_object(
    'sent_24h', (SELECT count(*) FROM public.reminders WHERE status = 'sent' AND sent_at >= day_ago),
    'failed_24h', (SELECT count(*) FROM public.reminders WHERE status = 'failed' AND updated_at >= day_ago),
    'sent', planbus_private.status_total('public.reminders', 'sent', exact_below),
    'cancelled', planbus_private.status_total('public.reminders', 'cancelled', exact_below),
    'failed', planbus_private.status_total('public.reminders', 'failed', exact_below));

  daily_limit := public.planbus_daily_plan_request_limit() - 'telegram_id' - 'used_today';

  RETURN jsonb_build_object(
    'generated_at', now(),
    'requests', requests,
    'failures_24h', failures,
    'reminders', reminders,
    'limits', jsonb_build_object('daily_plan_request_limit', daily_limit));
END
$$;

-- -- the due-reminder claim ------------------------------------------------------------------------------

-- The claim (migration 0004) asks for `status = 'scheduled' AND due_at <= now()`, which two partial indexes
-- over scheduled reminders answer: reminders_scheduled_due_at by a range up to now, and
-- reminders_scheduled_lead (for a lead's reminders) by reading every scheduled reminder and filtering.
-- The statistics of a long history make scheduled reminders look rare (a row or so) and every due_at long
-- past, so the planner saw no difference and took the lead index: each claim read the whole schedule,
-- weeks of future reminders included, three times. The lead index is rebuilt with a predicate that only
-- a look-up by lead implies (lead_id is NOT NULL anyway: every `lead_id = x` implies it), so the claim has
-- only the range over due rows to choose.
DROP INDEX IF EXISTS public.reminders_scheduled_lead;
CREATE INDEX IF NOT EXISTS reminders_scheduled_lead
  ON public.reminders (lead_id) WHERE status = 'scheduled' AND lead_id IS NOT NULL;

-- planbus_claim_due_reminders (migration 0004), the same steps and answer. The batch is now locked by
-- primary key from the list of each chat's earliest due reminder, instead of a join the planner, told
-- by the statistics of a long history that one row is due, made a nested loop over both lists (every due
-- reminder against every chat's first: quadratic in the due reminders).
CREATE OR REPLACE FUNCTION public.planbus_claim_due_reminders(
  p_limit int, p_lease_seconds int, p_max_attempts int DEFAULT 5
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  claimed jsonb;
BEGIN
  PERFORM planbus_private.require(p_limit > 0, 'p_limit must be positive');
  PERFORM planbus_private.require(p_lease_seconds > 0, 'p_lease_seconds must be positive');
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');

  -- Separate statements, so the claim below (a new snapshot) no longer sees the rows settled here.
  WITH replaced AS (
    SELECT r.id, l.plan_request_id AS current_plan
      FROM public.reminders r JOIN public.leads l ON l.id = r.lead_id
     WHERE ((r.status = 'scheduled' AND r.due_at <= now())
            OR (r.status = 'sending' AND r.lease_expires_at <= now()))
       AND l.plan_request_id IS NOT NULL
       AND l.plan_request_id <> r.plan_request_id
     FOR UPDATE OF r SKIP LOCKED
  )
  UPDATE public.reminders r
     SET status = 'cancelled',
         lease_expires_at = NULL,
         error = format('superseded by plan request %s', replaced.current_plan)
    FROM replaced
   WHERE r.id = replaced.id;

  WITH exhausted AS (
    SELECT id FROM public.reminders
     WHERE status = 'sending' AND lease_expires_at <= now() AND attempts >= p_max_attempts
     FOR UPDATE SKIP LOCKED
  )
  UPDATE public.reminders r
     SET status = 'failed',
         lease_expires_at = NULL,
         error = format('gave up after %s attempts: the sender did not finish (lease expired)', r.attempts)
    FROM exhausted
   WHERE r.id = exhausted.id;

  WITH first_per_chat AS (
    SELECT DISTINCT ON (r.telegram_id) r.id
      FROM public.reminders r
     WHERE ((r.status = 'scheduled' AND r.due_at <= now())
            OR (r.status = 'sending' AND r.lease_expires_at <= now()))
       AND NOT EXISTS (
         SELECT 1 FROM public.reminders busy
          WHERE busy.telegram_id = r.telegram_id AND busy.status = 'sending' AND busy.lease_expires_at > now())
     ORDER BY r.telegram_id, r.due_at, r.step_index
  ), due AS (
    SELECT r.id FROM public.reminders r
     WHERE r.id = ANY (ARRAY(SELECT f.id FROM first_per_chat f))
       AND ((r.status = 'scheduled' AND r.due_at <= now())
            OR (r.status = 'sending' AND r.lease_expires_at <= now()))
     ORDER BY r.due_at
     LIMIT p_limit
     FOR UPDATE OF r SKIP LOCKED
  ), taken AS (
    UPDATE public.reminders r
       SET status = 'sending',
           attempts = r.attempts + 1,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds)
      FROM due
     WHERE r.id = due.id
    RETURNING r.*
  )
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'id', c.id,
           'attempt', c.attempts,
           'chat_id', c.telegram_id,
           'lead_id', c.lead_id,
           'lead_name', l.full_name,
           'company', l.company,
           'plan_request_id', c.plan_request_id,
           'step_index', c.step_index,
           'due_at', c.due_at,
           'text', c.text
         ) ORDER BY c.due_at, c.step_index), '[]'::jsonb)
    INTO claimed
    FROM taken c JOIN public.leads l ON l.id = c.lead_id;
  RETURN claimed;
END
$$;

SELECT planbus_private.secure_functions();
