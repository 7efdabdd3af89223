-- The reminders state machine.
--
--   scheduled --claim_due--> sending --mark_sent--> sent
--       ^                       |  \--fail--> failed           (permanent: blocked bot, deactivated user)
--       +----retry (backoff)----+  --retry past max_attempts--> failed
--   scheduled --cancel / a newer plan--> cancelled
--
-- A claim takes due reminders in a batch with FOR UPDATE SKIP LOCKED, so concurrent senders never share
-- one, and holds them under a lease: a sender that dies leaves them to be claimed again once it expires.
-- Outcomes are fenced on (status = 'sending', attempts = the claim's attempt). Unlike a plan request, an
-- expired lease alone does not refuse an outcome: a message that did go out is better recorded late than
-- sent twice; once another sender has claimed the reminder, the old attempt number no longer matches.
-- Arguments that make no sense raise SQLSTATE 22023 and change nothing.

-- Claim up to p_limit due reminders (oldest first): 'scheduled' ones whose due_at has come and 'sending'
-- ones whose sender's lease expired. Before claiming:
-- - a due reminder whose plan request is no longer the lead's plan (leads.plan_request_id) is cancelled
--   instead: it may have been in flight when the newer plan completed, and come back by a retry or an
--   expired lease;
-- - an expired 'sending' reminder that already used p_max_attempts is failed: a reminder whose sending
--   keeps killing its sender must not be claimed forever.
-- A claim takes at most one reminder per chat (its earliest due), and none for a chat that has one in
-- flight: Telegram takes one message a second per chat, so a batch full of one busy chat would hold every
-- other chat behind it, and two senders would race each other into that chat's limit.
-- Returns a JSON array (possibly empty) of
-- {id, attempt, chat_id, lead_id, lead_name, company, plan_request_id, step_index, due_at, text}.
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
    SELECT r.id FROM public.reminders r JOIN first_per_chat f ON f.id = r.id
     WHERE (r.status = 'scheduled' AND r.due_at <= now())
        OR (r.status = 'sending' AND r.lease_expires_at <= now())
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

-- Delivered. p_via is 'telegram', or 'outbox' when no bot token is configured: the message (p_message,
-- else the reminder's text) is then kept in planbus_private.telegram_outbox and announced on the
-- 'planbus_outbox' channel as {id, reminder_id, chat_id, text, truncated} for the local sink. A NOTIFY
-- payload is limited to 8000 bytes, so a long message is shortened there (truncated: true); the outbox
-- row always keeps all of it.
-- Returns {recorded: true, status: 'sent'} or {recorded: false, reason} when the claim is no longer held.
CREATE OR REPLACE FUNCTION public.planbus_mark_reminder_sent(
  p_reminder_id uuid, p_attempt int, p_via text, p_message text
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.reminders;
  outbox_id bigint;
  message text;
  announcement jsonb;
BEGIN
  PERFORM planbus_private.require(p_via IN ('telegram', 'outbox'), 'p_via must be ''telegram'' or ''outbox''');
  UPDATE public.reminders
     SET status = 'sent', sent_at = now(), delivered_via = p_via, lease_expires_at = NULL, error = NULL
   WHERE id = p_reminder_id AND status = 'sending' AND attempts = p_attempt
  RETURNING * INTO r;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('recorded', false, 'reason', 'the claim is no longer held');
  END IF;
  IF p_via = 'outbox' THEN
    message := coalesce(nullif(p_message, ''), r.text);
    INSERT INTO planbus_private.telegram_outbox (reminder_id, chat_id, text)
    VALUES (r.id, r.telegram_id, message)
    RETURNING id INTO outbox_id;
    announcement := jsonb_build_object(
      'id', outbox_id, 'reminder_id', r.id, 'chat_id', r.telegram_id, 'text', message, 'truncated', false);
    IF octet_length(announcement::text) > 7900 THEN
      announcement := announcement || jsonb_build_object('text', left(message, 1000), 'truncated', true);
    END IF;
    IF octet_length(announcement::text) > 7900 THEN
      announcement := announcement || jsonb_build_object('text', '', 'truncated', true);
    END IF;
    PERFORM pg_notify('planbus_outbox', announcement::text);
  END IF;
  RETURN jsonb_build_object('recorded', true, 'status', r.status);
END
$$;

-- Try again later: after p_delay_seconds (Telegram's retry_after, or a backoff). A delay caused by the bot's
-- own rate limit does not use up an attempt (p_counts_as_attempt false). Past p_max_attempts: failed.
-- Giving an attempt back keeps the counter a safe fence: a sender whose claim was taken over holds a
-- number below every later claim's, since each claim adds one to what the previous holder left.
-- Returns {recorded: true, status: 'scheduled'|'failed', due_at, error} or {recorded: false, reason}.
CREATE OR REPLACE FUNCTION public.planbus_retry_reminder(
  p_reminder_id uuid, p_attempt int, p_delay_seconds double precision, p_error text,
  p_max_attempts int, p_counts_as_attempt boolean
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.reminders;
  used int;
BEGIN
  PERFORM planbus_private.require(p_max_attempts > 0, 'p_max_attempts must be positive');
  PERFORM planbus_private.require(p_counts_as_attempt IS NOT NULL, 'p_counts_as_attempt is required');
  SELECT * INTO r FROM public.reminders
   WHERE id = p_reminder_id AND status = 'sending' AND attempts = p_attempt
   FOR UPDATE;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('recorded', false, 'reason', 'the claim is no longer held');
  END IF;
  used := CASE WHEN p_counts_as_attempt THEN r.attempts ELSE r.attempts - 1 END;
  UPDATE public.reminders
     SET status = CASE WHEN used >= p_max_attempts THEN 'failed' ELSE 'scheduled' END,
         attempts = used,
         due_at = CASE WHEN used >= p_max_attempts THEN due_at
                       ELSE now() + make_interval(secs => greatest(coalesce(p_delay_seconds, 0), 0)) END,
         error = CASE WHEN used >= p_max_attempts
                      THEN format('gave up after %s attempts: %s', used, p_error) ELSE p_error END,
         lease_expires_at = NULL
   WHERE id = r.id
  RETURNING * INTO r;
  RETURN jsonb_build_object('recorded', true, 'status', r.status, 'due_at', r.due_at, 'error', r.error);
END
$$;

-- Failed for good (the user blocked the bot, the account is deactivated, the chat does not exist).
-- Returns {recorded: true, status: 'failed'} or {recorded: false, reason}.
CREATE OR REPLACE FUNCTION public.planbus_fail_reminder(p_reminder_id uuid, p_attempt int, p_error text)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM planbus_private.require(length(btrim(p_error)) > 0, 'p_error must be a non-empty reason');
  UPDATE public.reminders
     SET status = 'failed', error = p_error, lease_expires_at = NULL
   WHERE id = p_reminder_id AND status = 'sending' AND attempts = p_attempt;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('recorded', false, 'reason', 'the claim is no longer held');
  END IF;
  RETURN jsonb_build_object('recorded', true, 'status', 'failed');
END
$$;

-- Cancel every reminder of a lead that is not yet sent or failed, in flight included (its sender then
-- finds its claim gone and records nothing more); p_reason is kept as their error.
-- Returns {cancelled: <n>}.
CREATE OR REPLACE FUNCTION public.planbus_cancel_lead_reminders(p_lead_id uuid, p_reason text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  n int;
BEGIN
  UPDATE public.reminders SET status = 'cancelled', error = p_reason, lease_expires_at = NULL
   WHERE lead_id = p_lead_id AND status IN ('scheduled', 'sending');
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN jsonb_build_object('cancelled', n);
END
$$;
