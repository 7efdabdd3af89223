-- What an operator looks at and does by hand: `planbus status` (contract section 2) and moving a scheduled
-- reminder's due time. Both are SQL functions so they work the same over a direct connection and over the
-- Supabase REST API (rpc), with the service role.

-- One snapshot of the queue's health:
--   {generated_at,
--    requests:  {pending, processing, completed, failed, created_24h, waiting_retry,
--                oldest_pending_seconds, oldest_pending_id, stale},
--    failures_24h: {failed, errors, top_errors: [{error, count, last_at}, ...]},
--    reminders: {scheduled, sending, sent, cancelled, failed, due, oldest_due_seconds, stuck,
--                sent_24h, failed_24h},
--    limits:    {daily_plan_request_limit: {limit, unlimited, stored}}}
-- `stale` counts processing rows whose lease has expired (the sweeper will reset them); `stuck` the same
-- for reminders in flight; `waiting_retry` pending rows backing off after a failed attempt; `errors` every
-- attempt error recorded in the window, retried ones included, and `top_errors` the five most frequent.
-- The daily limit is the one in force, as planbus_daily_plan_request_limit() (migration 0007) reports it:
-- `limit` (null when unlimited) and the raw `stored` setting (null: the default applies). Without that
-- function nothing enforces a limit, which is reported as unlimited.
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
           'errors', (SELECT count(*) FROM planbus_private.plan_request_errors WHERE at >= day_ago),
           'top_errors', coalesce((
             SELECT jsonb_agg(jsonb_build_object('error', message, 'count', n, 'last_at', last_at)
                              ORDER BY n DESC, last_at DESC)
               FROM (SELECT message, count(*) AS n, max(at) AS last_at
                       FROM planbus_private.plan_request_errors
                      WHERE at >= day_ago
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

  IF to_regprocedure('public.planbus_daily_plan_request_limit(bigint)') IS NOT NULL THEN
    EXECUTE 'SELECT public.planbus_daily_plan_request_limit()' INTO daily_limit;
    daily_limit := daily_limit - 'telegram_id' - 'used_today';
  ELSE
    daily_limit := jsonb_build_object('limit', NULL, 'unlimited', true,
                                      'stored', planbus_private.setting('daily_plan_request_limit'));
  END IF;

  RETURN jsonb_build_object(
    'generated_at', now(),
    'requests', requests,
    'failures_24h', failures,
    'reminders', reminders,
    'limits', jsonb_build_object('daily_plan_request_limit', daily_limit));
END
$$;

-- Move a still-scheduled reminder to another due time (an operator's "send it now", or the demo making the
-- first step due at once). Only the time changes; the scheduler delivers it through the state machine.
-- Returns {rescheduled: true, due_at} or {rescheduled: false, status, reason}.
CREATE OR REPLACE FUNCTION public.planbus_reschedule_reminder(p_reminder_id uuid, p_due_at timestamptz)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.reminders;
BEGIN
  IF p_due_at IS NULL THEN
    RAISE EXCEPTION 'a reminder needs a due time' USING ERRCODE = '22004';
  END IF;
  UPDATE public.reminders SET due_at = p_due_at
   WHERE id = p_reminder_id AND status = 'scheduled'
  RETURNING * INTO r;
  IF FOUND THEN
    RETURN jsonb_build_object('rescheduled', true, 'due_at', r.due_at);
  END IF;
  SELECT * INTO r FROM public.reminders WHERE id = p_reminder_id;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('rescheduled', false, 'status', NULL, 'reason', 'unknown reminder');
  END IF;
  RETURN jsonb_build_object('rescheduled', false, 'status', r.status,
                            'reason', format('only a scheduled reminder can be moved; this one is %s', r.status));
END
$$;

SELECT planbus_private.secure_functions();
