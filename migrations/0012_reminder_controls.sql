-- Reminders follow the lead, and a Mini App user controls her own reminders.
--
-- Added to the reminder state machine of migration 0004:
--
--   scheduled --the lead closes---------------> cancelled   (error 'lead closed: <status>')
--   sending   --handed back, the lead closed--> cancelled   (instead of scheduled again)
--   scheduled --cancel_my_reminder-----------> cancelled   (error 'cancelled by the user')
--   scheduled --snooze_my_reminder-----------> scheduled   (a new due_at, at most 30 days ahead)
--
-- Closing a lead. When a lead's status changes to a closed one (the stored setting 'closed_lead_statuses',
-- a JSON array of statuses read at run time, default won, lost, archived; compared ignoring case and
-- surrounding spaces), its still-scheduled reminders are cancelled in the same transaction. A reminder in
-- flight is left to its sender, so a message that did go out is recorded as sent; if the sender hands it
-- back to be tried again, it is cancelled instead. Reopening a lead brings no cancelled reminder back: a
-- new plan schedules new ones. A changed setting applies from the next status change on.
--
-- The Mini App's calls (PostgREST: POST rpc/cancel_my_reminder, rpc/snooze_my_reminder) act for the user
-- the row-level security policies see (planbus_current_telegram_id(): the telegram_id claim, else the
-- telegram_users mapping of sub) on one of her own scheduled reminders, and answer the updated reminder.
-- Their refusals carry SQLSTATEs PostgREST turns into HTTP codes:
--   42501 (403; 401 for anon, which may not execute them)  the token names no Telegram user
--   22023 (400)  an argument that makes no sense: no reminder id, a due time in the past or too far ahead
--   PT404 (404)  no such reminder among hers (another user's is as unknown as one that does not exist)
--   PT409 (409)  the reminder is not scheduled: sending right now, sent, failed or cancelled
-- They are not named planbus_*: secure_functions() locks every planbus_* function down to service_role.

-- -- the closed statuses ----------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION planbus_private.default_closed_lead_statuses() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT ARRAY['won', 'lost', 'archived']
$$;

-- A list of statuses as stored and compared: lower case, trimmed, each once, in the order given.
-- NULL unless p_statuses is a JSON array of non-empty strings (an empty array is a valid, empty list).
CREATE OR REPLACE FUNCTION planbus_private.normalized_lead_statuses(p_statuses jsonb) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  item jsonb;
  status text;
  statuses text[] := '{}';
BEGIN
  IF jsonb_typeof(p_statuses) IS DISTINCT FROM 'array' THEN
    RETURN NULL;
  END IF;
  FOR item IN SELECT value FROM jsonb_array_elements(p_statuses) LOOP
    IF jsonb_typeof(item) <> 'string' THEN
      RETURN NULL;
    END IF;
    status := lower(btrim(item #>> '{}', E' \t\r\n'));
    IF status = '' THEN
      RETURN NULL;
    END IF;
    IF NOT status = ANY (statuses) THEN
      statuses := statuses || status;
    END IF;
  END LOOP;
  RETURN statuses;
END
$$;

-- The closed statuses in force. Absent, malformed (written by hand) or unreadable (Vault failing), the
-- default applies, with a WARNING for the last two: a typo must not stop closed leads' reminders.
CREATE OR REPLACE FUNCTION planbus_private.closed_lead_statuses() RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  stored text;
  statuses text[];
BEGIN
  BEGIN
    stored := planbus_private.setting('closed_lead_statuses');
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'closed_lead_statuses unreadable, the default applies: % (%)', SQLERRM, SQLSTATE;
    RETURN planbus_private.default_closed_lead_statuses();
  END;
  IF stored IS NULL THEN
    RETURN planbus_private.default_closed_lead_statuses();
  END IF;
  BEGIN
    statuses := planbus_private.normalized_lead_statuses(stored::jsonb);
  EXCEPTION WHEN invalid_text_representation THEN
    statuses := NULL;
  END;
  IF statuses IS NULL THEN
    RAISE WARNING 'closed_lead_statuses is not a JSON array of statuses, the default applies: %', left(stored, 200);
    RETURN planbus_private.default_closed_lead_statuses();
  END IF;
  RETURN statuses;
END
$$;

CREATE OR REPLACE FUNCTION planbus_private.is_closed_lead_status(p_status text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT coalesce(lower(btrim(p_status, E' \t\r\n')) = ANY (planbus_private.closed_lead_statuses()), false)
$$;

-- The closed statuses for `planbus leads`: {statuses: [...] in force, stored: the raw setting (NULL: the
-- default applies), default: [...]}.
CREATE OR REPLACE FUNCTION public.planbus_closed_lead_statuses() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  RETURN jsonb_build_object(
    'statuses', to_jsonb(planbus_private.closed_lead_statuses()),
    'stored', planbus_private.setting('closed_lead_statuses'),
    'default', to_jsonb(planbus_private.default_closed_lead_statuses()));
END
$$;

-- Change the closed statuses: a JSON array of non-empty strings (stored lower case, trimmed, each once;
-- [] closes no lead). Anything else is refused with 22023 and the setting is left as it was.
-- Returns what planbus_closed_lead_statuses does.
CREATE OR REPLACE FUNCTION public.planbus_set_closed_lead_statuses(p_statuses jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  statuses text[] := planbus_private.normalized_lead_statuses(p_statuses);
BEGIN
  IF statuses IS NULL THEN
    RAISE EXCEPTION 'closed lead statuses are a JSON array of non-empty strings, not %',
      coalesce(left(p_statuses::text, 200), 'null') USING ERRCODE = '22023';
  END IF;
  PERFORM public.planbus_store_setting('closed_lead_statuses', to_jsonb(statuses)::text);
  RETURN public.planbus_closed_lead_statuses();
END
$$;

-- -- reminders follow the lead ---------------------------------------------------------------------------

-- AFTER UPDATE OF status on leads, when the status changed: a closed lead's scheduled reminders are
-- cancelled in the transaction that closed it.
CREATE OR REPLACE FUNCTION planbus_private.cancel_reminders_of_closed_lead() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  IF planbus_private.is_closed_lead_status(NEW.status) THEN
    UPDATE public.reminders
       SET status = 'cancelled', error = format('lead closed: %s', btrim(NEW.status, E' \t\r\n'))
     WHERE lead_id = NEW.id AND status = 'scheduled';
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS leads_closed_cancel_reminders ON public.leads;
CREATE TRIGGER leads_closed_cancel_reminders
  AFTER UPDATE OF status ON public.leads
  FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status)
  EXECUTE FUNCTION planbus_private.cancel_reminders_of_closed_lead();

-- BEFORE UPDATE on reminders going from 'sending' back to 'scheduled' (a retry, or a reminder handed back
-- unsent): if its lead has closed meanwhile, it is cancelled instead. FOR SHARE waits for a transaction
-- closing the lead at this very moment and then reads the status it committed; without it, a retry
-- racing the close could read the old status after the close had already looked for scheduled reminders.
CREATE OR REPLACE FUNCTION planbus_private.cancel_handed_back_reminder_of_closed_lead() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  lead_status text;
BEGIN
  SELECT status INTO lead_status FROM public.leads WHERE id = NEW.lead_id FOR SHARE;
  IF planbus_private.is_closed_lead_status(lead_status) THEN
    NEW.status := 'cancelled';
    NEW.error := format('lead closed: %s', btrim(lead_status, E' \t\r\n'));
    NEW.lease_expires_at := NULL;
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS reminders_cancel_when_lead_closed ON public.reminders;
CREATE TRIGGER reminders_cancel_when_lead_closed
  BEFORE UPDATE OF status ON public.reminders
  FOR EACH ROW WHEN (OLD.status = 'sending' AND NEW.status = 'scheduled')
  EXECUTE FUNCTION planbus_private.cancel_handed_back_reminder_of_closed_lead();

-- -- the Mini App user's controls --------------------------------------------------------------------------

-- The Telegram user this request acts for, exactly as the RLS policies see her; refused when none.
CREATE OR REPLACE FUNCTION planbus_private.require_mini_app_user() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  me bigint := public.planbus_current_telegram_id();
BEGIN
  IF me IS NULL THEN
    RAISE EXCEPTION 'this token names no Telegram user' USING ERRCODE = '42501',
      HINT = 'sign in through telegram_auth and send its access_token';
  END IF;
  RETURN me;
END
$$;

-- One of p_telegram_id's reminders, locked for a change that only a scheduled reminder allows
-- (p_change: 'cancelled' or 'snoozed', for the message). The lock waits for a sender claiming it at this
-- moment, and then sees it 'sending': a claimed reminder is never changed under its sender.
CREATE OR REPLACE FUNCTION planbus_private.lock_own_scheduled_reminder(
  p_telegram_id bigint, p_reminder_id uuid, p_change text
) RETURNS public.reminders
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.reminders;
BEGIN
  PERFORM planbus_private.require(p_reminder_id IS NOT NULL, 'reminder_id is required');
  SELECT * INTO r FROM public.reminders
   WHERE id = p_reminder_id AND telegram_id = p_telegram_id
   FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'reminder % not found', p_reminder_id USING ERRCODE = 'PT404';
  END IF;
  IF r.status <> 'scheduled' THEN
    RAISE EXCEPTION 'reminder % is %: only a scheduled reminder can be %', r.id,
      CASE r.status WHEN 'sending' THEN 'being sent right now' ELSE r.status END, p_change
      USING ERRCODE = 'PT409', DETAIL = format('status: %s', r.status);
  END IF;
  RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION planbus_private.cancel_own_reminder(p_telegram_id bigint, p_reminder_id uuid)
RETURNS public.reminders
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.reminders := planbus_private.lock_own_scheduled_reminder(p_telegram_id, p_reminder_id, 'cancelled');
BEGIN
  UPDATE public.reminders SET status = 'cancelled', error = 'cancelled by the user'
   WHERE id = r.id
  RETURNING * INTO r;
  RETURN r;
END
$$;

-- A snooze moves the due time, later or sooner, to a moment in the future at most 30 days from now; the
-- sender claims the reminder when that moment comes, not before.
CREATE OR REPLACE FUNCTION planbus_private.snooze_own_reminder(
  p_telegram_id bigint, p_reminder_id uuid, p_due_at timestamptz
) RETURNS public.reminders
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  r public.reminders;
BEGIN
  PERFORM planbus_private.require(p_due_at IS NOT NULL, 'due_at is required: the new due time');
  PERFORM planbus_private.require(p_due_at > now(), format('due_at must be in the future, not %s', p_due_at));
  PERFORM planbus_private.require(p_due_at <= now() + interval '30 days',
    format('due_at must be within 30 days from now, not %s', p_due_at));
  r := planbus_private.lock_own_scheduled_reminder(p_telegram_id, p_reminder_id, 'snoozed');
  UPDATE public.reminders SET due_at = p_due_at
   WHERE id = r.id
  RETURNING * INTO r;
  RETURN r;
END
$$;

-- The Mini App's calls. Arguments are named for the JSON body PostgREST passes:
--   rpc/cancel_my_reminder {"reminder_id": "<uuid>"}
--   rpc/snooze_my_reminder {"reminder_id": "<uuid>", "due_at": "<timestamp with time zone>"}
CREATE OR REPLACE FUNCTION public.cancel_my_reminder(reminder_id uuid) RETURNS public.reminders
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT * FROM planbus_private.cancel_own_reminder(planbus_private.require_mini_app_user(), $1)
$$;

CREATE OR REPLACE FUNCTION public.snooze_my_reminder(reminder_id uuid, due_at timestamptz)
RETURNS public.reminders
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT * FROM planbus_private.snooze_own_reminder(planbus_private.require_mini_app_user(), $1, $2)
$$;

REVOKE ALL ON FUNCTION public.cancel_my_reminder(uuid), public.snooze_my_reminder(uuid, timestamptz)
  FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.cancel_my_reminder(uuid), public.snooze_my_reminder(uuid, timestamptz)
  TO authenticated, service_role;

SELECT planbus_private.secure_functions();

-- PostgREST caches the schema: a PostgREST listening on its channel learns of the new rpc calls at commit
-- (Supabase reloads on DDL by itself). Without a listener the notice is simply dropped.
NOTIFY pgrst, 'reload schema';
