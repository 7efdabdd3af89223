-- The Mini App's insert, cheaper, refusing and counting and announcing exactly what it did: what the insert
-- benchmark found each insert paying for, inside the user's transaction, beyond the row itself.
--   row-level security    the insert policies called planbus_current_telegram_id() twice through InitPlans
--                         and checked the lead with an EXISTS subquery, which the planner planned anew for
--                         every statement, with the leads table's own policy (a third call) inside it. One
--                         function now answers the same question per row: the caller as
--                         planbus_current_telegram_id() reads it, then her lead by primary key, with a plan
--                         PL/pgSQL keeps for the session.
--   the daily limit       asked pg_roles and pg_class on every insert whether the caller is one row-level
--                         security applies to. The trigger now fires only for such callers, by a WHEN
--                         clause the executor evaluates without entering the function
--                         (row_security_active: superusers, BYPASSRLS roles and the table's owner are not
--                         counted, as before). The counters leave room on their pages for the day's updates.
--   the webhook           ran two EXISTS queries over pg_proc (through the executor, short-circuit or not)
--                         before it fell through to pg_notify. Where neither pg_net nor Realtime is installed
--                         it now goes straight to pg_notify, with the payload built as json text; pg_net's
--                         and Realtime's functions are called by statements planned once per session.
--   settings              read from Vault with a statement PL/pgSQL keeps planned, instead of EXECUTE.

-- -- row-level security ----------------------------------------------------------------------------------

-- The schema of the functions the policies call: the Mini App's role must be able to execute them, and
-- PostgREST exposes only `public`, so they are not remote procedures too.
CREATE SCHEMA IF NOT EXISTS planbus_policy;
REVOKE ALL ON SCHEMA planbus_policy FROM PUBLIC;
GRANT USAGE ON SCHEMA planbus_policy TO authenticated, service_role;

-- Whether the caller may insert a request for p_lead_id in the name of p_telegram_id: p_telegram_id is the
-- caller's Telegram id (the `telegram_id` claim, else the one telegram_users maps `sub` to, exactly as
-- planbus_current_telegram_id() reads it) and the lead is hers. SECURITY DEFINER, as that function is, to
-- read the mapping and the lead whatever the caller may see.
CREATE OR REPLACE FUNCTION planbus_policy.may_insert_request(p_lead_id uuid, p_telegram_id bigint)
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  claims jsonb := auth.jwt();
  claim text := claims ->> 'telegram_id';
  sub text;
  caller bigint;
BEGIN
  IF claim ~ '^-?[0-9]{1,18}$' THEN
    caller := claim::bigint;
  ELSE
    sub := claims ->> 'sub';
    IF sub ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
      SELECT u.telegram_id INTO caller FROM public.telegram_users u WHERE u.user_id = sub::uuid;
    END IF;
  END IF;
  IF caller IS NULL OR p_telegram_id IS DISTINCT FROM caller THEN
    RETURN false;
  END IF;
  RETURN EXISTS (SELECT 1 FROM public.leads l WHERE l.id = p_lead_id AND l.telegram_id = caller);
END
$$;
REVOKE ALL ON FUNCTION planbus_policy.may_insert_request(uuid, bigint) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION planbus_policy.may_insert_request(uuid, bigint) TO authenticated, service_role;

-- The insert policies of migrations 0005 and 0010, the same conditions: own lead, own telegram id, only
-- 'pending' with no result, error or attempts.
DROP POLICY IF EXISTS plan_requests_insert_own ON public.plan_requests;
CREATE POLICY plan_requests_insert_own ON public.plan_requests
  FOR INSERT TO authenticated
  WITH CHECK (
    status = 'pending' AND result IS NULL AND error IS NULL AND attempts = 0
    AND planbus_policy.may_insert_request(lead_id, telegram_id)
  );

DROP POLICY IF EXISTS draft_requests_insert_own ON public.draft_requests;
CREATE POLICY draft_requests_insert_own ON public.draft_requests
  FOR INSERT TO authenticated
  WITH CHECK (
    status = 'pending' AND result IS NULL AND error IS NULL AND attempts = 0
    AND planbus_policy.may_insert_request(lead_id, telegram_id)
  );

-- -- settings --------------------------------------------------------------------------------------------

-- As migration 0006's: Vault's decrypted secret named 'planbus_<name>' first, then the settings table. The
-- Vault statement is static, so it is planned once per session; it is planned only where Vault exists.
CREATE OR REPLACE FUNCTION planbus_private.setting(p_name text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v text;
BEGIN
  IF to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
    SELECT d.decrypted_secret INTO v FROM vault.decrypted_secrets d WHERE d.name = 'planbus_' || p_name LIMIT 1;
    IF v IS NOT NULL THEN
      RETURN v;
    END IF;
  END IF;
  SELECT s.value INTO v FROM planbus_private.settings s WHERE s.name = p_name;
  RETURN v;
END
$$;

-- -- the daily limit -------------------------------------------------------------------------------------

-- BEFORE INSERT on every kind's table (TG_ARGV[0]: the kind), attached by register_request_kind with
-- WHEN (row_security_active(<the table>)): it runs only for the callers row-level security applies to,
-- so it no longer asks who the caller is. Otherwise as migration 0014's: the limit is the stored
-- 'daily_<kind>_request_limit', 'unlimited', or the kind's default when absent, malformed or unreadable.
CREATE OR REPLACE FUNCTION planbus_private.enforce_daily_request_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_kind text := TG_ARGV[0];
  setting_name text := 'daily_' || of_kind || '_request_limit';
  stored text;
  day_limit int;
  used int;
BEGIN
  IF to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
    BEGIN
      stored := planbus_private.setting(setting_name);
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING '% unreadable, the default applies: % (%)', setting_name, SQLERRM, SQLSTATE;
    END;
  ELSE
    SELECT s.value INTO stored FROM planbus_private.settings s WHERE s.name = setting_name;
  END IF;
  stored := lower(btrim(stored));
  IF stored = 'unlimited' THEN
    RETURN NEW;
  ELSIF stored ~ '^[0-9]{1,9}$' THEN
    day_limit := stored::int;
  ELSE
    day_limit := (planbus_private.request_kind(of_kind)).daily_limit_default;
    IF day_limit IS NULL THEN
      RETURN NEW;
    END IF;
  END IF;

  INSERT INTO planbus_private.daily_request_counts AS c (kind, telegram_id, day, requests)
  VALUES (of_kind, NEW.telegram_id, (now() AT TIME ZONE 'UTC')::date, 1)
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

-- A user's counter row is updated by each of her requests of the day: with room left on its page the
-- update is a heap-only one, which writes no index entry.
ALTER TABLE planbus_private.daily_request_counts
  SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);

-- -- the webhook -----------------------------------------------------------------------------------------

-- AFTER INSERT on every kind's table (TG_ARGV[0]: the kind), as migration 0015's. Where neither pg_net's
-- nor Realtime's schema exists (the catalog cache answers to_regnamespace), the payload goes to pg_notify
-- as json text (the same document) without a query; elsewhere each function is looked for in pg_proc
-- only where its schema exists, the URL read only where pg_net's function does, and net.http_post and
-- realtime.publish are called by static statements, planned once per session rather than on every insert
-- (a statement is planned when it first runs, so neither needs to exist where it does not run). The order
-- (pg_net -> realtime.publish -> pg_notify) is unchanged, and a failing path still only warns.
CREATE OR REPLACE FUNCTION planbus_private.send_request_webhook() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_kind text := TG_ARGV[0];
  net_schema oid := to_regnamespace('net');
  realtime_schema oid := to_regnamespace('realtime');
  payload jsonb;
  target_url text;
  net_request bigint;
BEGIN
  BEGIN
    IF net_schema IS NULL AND realtime_schema IS NULL THEN
      PERFORM pg_notify('planbus_events', json_build_object(
        'type', TG_OP, 'table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,
        'record', row_to_json(NEW), 'old_record', NULL)::text);
      RETURN NULL;
    END IF;
    payload := jsonb_build_object(
      'type', TG_OP, 'table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,
      'record', to_jsonb(NEW), 'old_record', NULL);
    IF net_schema IS NOT NULL THEN
      IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'http_post' AND pronamespace = net_schema) THEN
        target_url := planbus_private.setting('webhook_url_' || of_kind);
        IF target_url IS NULL AND of_kind = 'plan' THEN
          target_url := planbus_private.setting('webhook_url');
        END IF;
      END IF;
    END IF;
    IF target_url IS NOT NULL THEN
      SELECT net.http_post(
               url := target_url, body := payload,
               headers := jsonb_build_object(
                 'Content-Type', 'application/json',
                 'X-Webhook-Secret', coalesce(planbus_private.setting('webhook_secret'), '')),
               timeout_milliseconds := 5000)
        INTO net_request;
      INSERT INTO planbus_private.webhook_deliveries (kind, request_id, channel, net_request_id)
      VALUES (of_kind, NEW.id, 'pg_net', net_request);
      RETURN NULL;
    END IF;
    IF realtime_schema IS NOT NULL THEN
      IF EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'publish' AND pronamespace = realtime_schema) THEN
        PERFORM realtime.publish(
          coalesce(planbus_private.setting('realtime_channel_' || of_kind),
                   planbus_private.setting('realtime_channel'), 'planbus'),
          of_kind || '_request_inserted', payload);
        RETURN NULL;
      END IF;
    END IF;
    PERFORM pg_notify('planbus_events', payload::text);
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'planbus webhook for % request % not sent (the sweeper will pick it up): % (%)',
      of_kind, NEW.id, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$$;

-- -- registering a kind ----------------------------------------------------------------------------------

-- As migration 0009's, with the daily limit's trigger fired only for the callers row-level security
-- applies to.
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
                 'WHEN (pg_catalog.row_security_active(%L::regclass)) '
                 'EXECUTE FUNCTION planbus_private.enforce_daily_request_limit(%L)',
                 p_table || '_daily_limit', relation, relation, p_kind);
  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_table || '_webhook', relation);
  EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW WHEN (NEW.status = ''pending'') '
                 'EXECUTE FUNCTION planbus_private.send_request_webhook(%L)', p_table || '_webhook', relation, p_kind);
  EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', p_table || '_forget_errors', relation);
  EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS gone FOR EACH STATEMENT '
                 'EXECUTE FUNCTION planbus_private.forget_request_errors(%L)', p_table || '_forget_errors',
                 relation, p_kind);
END
$$;

-- The kinds registered so far, registered again as they are: their limit triggers get the WHEN clause.
SELECT planbus_private.register_request_kind(kind, table_name, complete_function, daily_limit_default)
  FROM planbus_private.request_kinds ORDER BY kind;

SELECT planbus_private.secure_functions();
