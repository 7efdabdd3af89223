-- Reminders of a plan that is no longer the lead's plan are never sent, and one busy chat does not hold
-- the others back.
--
-- planbus_complete_request cancels the old plan's 'scheduled' reminders, and planbus_cancel_lead_reminders
-- cancelled only 'scheduled' ones too. A reminder that was in flight ('sending') at that moment escaped
-- both: a failed attempt put it back to 'scheduled', or its lease expired, and the next claim sent it.
-- Now the claim cancels, instead of claiming, any due reminder whose plan request is not the lead's current
-- plan (leads.plan_request_id), and an explicit cancellation also covers in-flight reminders, whose sender
-- then finds its claim gone and can record nothing more.
-- A claim also takes at most one reminder per chat (its earliest due), and none for a chat that has one
-- in flight, see below.
-- Both functions keep the signatures, argument checks and answers of 0004.

CREATE OR REPLACE FUNCTION public.planbus_claim_due_reminders(p_limit int, p_lease_seconds int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  claimed jsonb;
BEGIN
  IF p_limit IS NULL OR p_limit <= 0 THEN
    RAISE EXCEPTION 'p_limit must be positive' USING ERRCODE = '22023';
  END IF;
  IF p_lease_seconds IS NULL OR p_lease_seconds <= 0 THEN
    RAISE EXCEPTION 'p_lease_seconds must be positive' USING ERRCODE = '22023';
  END IF;

  -- Its own statement, so the claim below (a new snapshot) no longer sees the cancelled rows.
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

  -- At most one reminder per chat in a claim, and none for a chat with a reminder in flight: Telegram
  -- takes one message a second per chat, so a batch full of one busy chat would hold every other chat's
  -- reminders back behind it, and two senders would race each other into that chat's limit.
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

-- Cancel every reminder of a lead that is not yet sent or failed, in flight included; p_reason is kept as
-- their error. Returns {cancelled: <n>}.
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

SELECT planbus_private.secure_functions();
