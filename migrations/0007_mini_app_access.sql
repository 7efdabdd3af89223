-- Mini App access: the Telegram user mapping `telegram_auth` writes, and the per-user daily limit on plan
-- requests (cost control: every request is an LLM call someone pays for).

-- Find or create the planbus user of a Telegram user whose initData was verified. A Telegram id keeps the
-- user_id it was first given, for good: it is the `sub` of every token issued to that user, and the key
-- re-minted tokens (sub and role only) are mapped back to a Telegram id by. A first sign-in gets a random
-- uuid, so the uuid reveals nothing about the Telegram id. Two first sign-ins at once get the same row
-- (ON CONFLICT), and a repeat sign-in writes nothing unless the names changed.
-- Returns {user_id, telegram_id, created}.
CREATE OR REPLACE FUNCTION public.planbus_upsert_telegram_user(
  p_telegram_id bigint, p_username text DEFAULT NULL, p_first_name text DEFAULT NULL, p_last_name text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  uid uuid;
  inserted boolean;
BEGIN
  IF p_telegram_id IS NULL OR p_telegram_id <= 0 THEN
    RAISE EXCEPTION 'not a Telegram user id: %', p_telegram_id USING ERRCODE = '22023';
  END IF;
  INSERT INTO public.telegram_users AS t (user_id, telegram_id, username, first_name, last_name)
  VALUES (gen_random_uuid(), p_telegram_id, left(p_username, 256), left(p_first_name, 256), left(p_last_name, 256))
  ON CONFLICT (telegram_id) DO UPDATE
     SET username = EXCLUDED.username, first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name
   WHERE (t.username, t.first_name, t.last_name)
         IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.first_name, EXCLUDED.last_name)
  RETURNING t.user_id, (t.xmax = 0) INTO uid, inserted;
  IF NOT FOUND THEN
    -- Unchanged names: the conflicting row was locked but not updated; read its user_id.
    SELECT t.user_id INTO uid FROM public.telegram_users t WHERE t.telegram_id = p_telegram_id;
    inserted := false;
  END IF;
  RETURN jsonb_build_object('user_id', uid, 'telegram_id', p_telegram_id, 'created', inserted);
END
$$;

-- The daily limit. One counter row per Telegram user: (the UTC day, requests accepted that day). Counting
-- with an upsert takes the row lock, so concurrent inserts of one user queue behind each other and each
-- sees the count the previous one left, at any isolation level (under REPEATABLE READ the second fails
-- with a serialization error instead of slipping past). A refused insert rolls its increment back.
CREATE TABLE IF NOT EXISTS planbus_private.daily_plan_request_counts (
  telegram_id bigint PRIMARY KEY,
  day         date NOT NULL,
  requests    int NOT NULL CHECK (requests >= 0)
);
GRANT ALL ON planbus_private.daily_plan_request_counts TO service_role;

-- The limit in force: the stored 'daily_plan_request_limit' setting, a count per user per UTC day.
-- 'unlimited' (NULL here) turns it off; 0 refuses every Mini App request (a pause). Absent, not a number
-- (written by hand), or unreadable (Vault failing), the default 20 applies: a typo or an outage of the
-- settings store must neither open the gate nor close it.
CREATE OR REPLACE FUNCTION planbus_private.daily_plan_request_limit() RETURNS int
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v text;
BEGIN
  BEGIN
    v := lower(btrim(planbus_private.setting('daily_plan_request_limit')));
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'daily_plan_request_limit unreadable, the default applies: % (%)', SQLERRM, SQLSTATE;
  END;
  IF v = 'unlimited' THEN
    RETURN NULL;
  ELSIF v ~ '^[0-9]{1,9}$' THEN
    RETURN v::int;
  END IF;
  RETURN 20;
END
$$;

-- Whether inserts by this role count against the limit: the roles row-level security applies to (the Mini
-- App's `authenticated`, and `anon`). Superusers, BYPASSRLS roles (service_role) and the table's owner act
-- for the operator, not for a Mini App user, and are not limited.
CREATE OR REPLACE FUNCTION planbus_private.daily_limit_applies_to(p_role text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT coalesce((
    SELECT NOT (r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, c.relowner, 'MEMBER'))
      FROM pg_roles r, pg_class c
     WHERE r.rolname = p_role AND c.oid = 'public.plan_requests'::regclass
  ), true)
$$;

-- BEFORE INSERT on plan_requests. SECURITY DEFINER to reach the settings and counters, so the caller is
-- read from the `role` setting (what SET ROLE and PostgREST set), which a definer function does not change.
CREATE OR REPLACE FUNCTION planbus_private.enforce_daily_plan_request_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  caller text := coalesce(nullif(current_setting('role', true), 'none'), session_user);
  day_limit int;
  today date := (now() AT TIME ZONE 'UTC')::date;
  used int;
BEGIN
  IF NOT planbus_private.daily_limit_applies_to(caller) THEN
    RETURN NEW;
  END IF;
  day_limit := planbus_private.daily_plan_request_limit();
  IF day_limit IS NULL THEN
    RETURN NEW;
  END IF;
  INSERT INTO planbus_private.daily_plan_request_counts AS c (telegram_id, day, requests)
  VALUES (NEW.telegram_id, today, 1)
  ON CONFLICT (telegram_id) DO UPDATE
     SET requests = CASE WHEN c.day = EXCLUDED.day THEN c.requests + 1 ELSE 1 END,
         day = EXCLUDED.day
  RETURNING c.requests INTO used;
  IF used > day_limit THEN
    RAISE EXCEPTION 'daily plan request limit reached: % per user per day', day_limit
      USING ERRCODE = 'PT429',
            DETAIL = format('%s requests were already made today (UTC)', used - 1),
            HINT = 'try again after midnight UTC';
  END IF;
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS plan_requests_daily_limit ON public.plan_requests;
CREATE TRIGGER plan_requests_daily_limit
  BEFORE INSERT ON public.plan_requests
  FOR EACH ROW EXECUTE FUNCTION planbus_private.enforce_daily_plan_request_limit();

-- The limit and, for one user, today's use. Returns {limit, unlimited, stored, telegram_id?, used_today?}:
-- `limit` is the number in force (NULL when unlimited), `stored` the raw setting (NULL: default).
CREATE OR REPLACE FUNCTION public.planbus_daily_plan_request_limit(p_telegram_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  day_limit int := planbus_private.daily_plan_request_limit();
  answer jsonb := jsonb_build_object(
    'limit', day_limit,
    'unlimited', day_limit IS NULL,
    'stored', planbus_private.setting('daily_plan_request_limit'));
BEGIN
  IF p_telegram_id IS NOT NULL THEN
    answer := answer || jsonb_build_object(
      'telegram_id', p_telegram_id,
      'used_today', coalesce((
        SELECT c.requests FROM planbus_private.daily_plan_request_counts c
         WHERE c.telegram_id = p_telegram_id AND c.day = (now() AT TIME ZONE 'UTC')::date), 0));
  END IF;
  RETURN answer;
END
$$;

-- Change the limit: a count (0 pauses the Mini App's requests), or NULL for unlimited. Takes effect on the
-- next insert; requests already made today keep counting. Returns what planbus_daily_plan_request_limit does.
CREATE OR REPLACE FUNCTION public.planbus_set_daily_plan_request_limit(p_limit int) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  IF p_limit < 0 THEN
    RAISE EXCEPTION 'a daily limit is a count of requests, not %', p_limit USING ERRCODE = '22023';
  END IF;
  PERFORM public.planbus_store_setting('daily_plan_request_limit', coalesce(p_limit::text, 'unlimited'));
  RETURN public.planbus_daily_plan_request_limit();
END
$$;

-- Store the default explicitly, so `planbus status` shows the limit in force; an existing value is kept.
DO $$
BEGIN
  IF planbus_private.setting('daily_plan_request_limit') IS NULL THEN
    INSERT INTO planbus_private.settings (name, value) VALUES ('daily_plan_request_limit', '20')
    ON CONFLICT (name) DO NOTHING;
  END IF;
END
$$;

SELECT planbus_private.secure_functions();
