-- The hot paths, cheaper, same behaviour: what the benchmarks found each completion and each Mini App
-- insert paying for.
--   check_reminders       one set-based query over the schedule instead of a loop of require() calls per
--                         reminder; the same checks in the same order, so the same first error and message.
--   the webhook trigger   asks whether pg_net (then Realtime) exists with a cached schema lookup before
--                         anything else, so an insert where neither is installed reads no setting and scans
--                         no pg_proc; the order (pg_net -> realtime.publish -> pg_notify) is unchanged.
--   the daily limit       one trigger function: the role check and the setting read inline (no nested
--                         SECURITY DEFINER calls, each with its own search_path switch), the kind's default
--                         read only when the setting does not give a limit, and the subtransaction that
--                         guards a failing Vault entered only where Vault exists.

-- -- completions -----------------------------------------------------------------------------------------

-- A completion's reminder schedule: an array of {step_index: integer 0..1000, due_at: timestamp, text:
-- non-empty}, step_index distinct. The first offending element (then its first failing check) is named,
-- as element-by-element checking would: object, step_index present, in range and whole, not seen before,
-- due_at a string, due_at a timestamp (the cast's own error), text non-empty.
CREATE OR REPLACE FUNCTION planbus_private.check_reminders(p_reminders jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  first_bad int;
  problem text;
  cast_first boolean;
BEGIN
  IF jsonb_typeof(p_reminders) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION '%', 'p_completion.reminders must be a JSON array' USING ERRCODE = '22023';
  END IF;

  SELECT position, message, checks_text INTO first_bad, problem, cast_first
    FROM (
      SELECT position,
             CASE
               WHEN jsonb_typeof(item) <> 'object' THEN format('reminder %s must be an object', position)
               WHEN step IS NULL THEN format('reminder %s needs a step_index', position)
               WHEN NOT (step >= 0 AND step <= 1000 AND step = trunc(step)) THEN
                 format('reminder %s: step_index must be an integer from 0 to 1000', position)
               WHEN count(*) OVER (PARTITION BY step ORDER BY position) > 1 THEN
                 format('reminder %s: step_index %s appears twice', position, step)
               WHEN jsonb_typeof(item -> 'due_at') IS DISTINCT FROM 'string' THEN
                 format('reminder %s needs a due_at timestamp', position)
               WHEN length(btrim(coalesce(item ->> 'text', ''))) = 0 THEN
                 format('reminder %s needs a non-empty text', position)
             END AS message,
             -- Whether every check before the due_at cast passed: only the text check comes after it.
             jsonb_typeof(item) = 'object' AND step IS NOT NULL AND step >= 0 AND step <= 1000
               AND step = trunc(step) AND count(*) OVER (PARTITION BY step ORDER BY position) = 1
               AND jsonb_typeof(item -> 'due_at') = 'string' AS checks_text
        FROM (
          SELECT e.n - 1 AS position, e.item,
                 CASE WHEN jsonb_typeof(e.item -> 'step_index') = 'number'
                      THEN (e.item ->> 'step_index')::numeric END AS step
            FROM jsonb_array_elements(p_reminders) WITH ORDINALITY AS e(item, n)
        ) elements
    ) checked
   WHERE message IS NOT NULL
   ORDER BY position
   LIMIT 1;

  -- The due_at of every element before the first bad one (and of that one, when only its text is wrong)
  -- must be a timestamp: the cast raises its own error, for the first that is not.
  PERFORM count((e.item ->> 'due_at')::timestamptz)
     FROM jsonb_array_elements(p_reminders) WITH ORDINALITY AS e(item, n)
    WHERE first_bad IS NULL OR e.n - 1 < first_bad OR (e.n - 1 = first_bad AND cast_first);

  IF problem IS NOT NULL THEN
    RAISE EXCEPTION '%', problem USING ERRCODE = '22023';
  END IF;
END
$$;

-- -- the Mini App's insert -------------------------------------------------------------------------------

-- AFTER INSERT on every kind's table (TG_ARGV[0]: the kind), as migration 0009 describes it. The
-- schemas of pg_net and Realtime are looked up first (to_regnamespace: the catalog cache); only where one
-- exists is its function looked for in pg_proc, and the URL read only where pg_net exists.
CREATE OR REPLACE FUNCTION planbus_private.send_request_webhook() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_kind text := TG_ARGV[0];
  payload jsonb := jsonb_build_object(
    'type', TG_OP,
    'table', TG_TABLE_NAME,
    'schema', TG_TABLE_SCHEMA,
    'record', to_jsonb(NEW),
    'old_record', NULL
  );
  net_schema oid := to_regnamespace('net');
  realtime_schema oid := to_regnamespace('realtime');
  url text;
  net_request bigint;
BEGIN
  BEGIN
    IF net_schema IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'http_post' AND pronamespace = net_schema) THEN
      url := planbus_private.setting('webhook_url_' || of_kind);
      IF url IS NULL AND of_kind = 'plan' THEN
        url := planbus_private.setting('webhook_url');
      END IF;
    END IF;
    IF url IS NOT NULL THEN
      EXECUTE 'SELECT net.http_post(url := $1, body := $2, headers := $3, timeout_milliseconds := $4)'
        INTO net_request
        USING url, payload,
              jsonb_build_object('Content-Type', 'application/json',
                                 'X-Webhook-Secret', coalesce(planbus_private.setting('webhook_secret'), '')),
              5000;
      INSERT INTO planbus_private.webhook_deliveries (kind, request_id, channel, net_request_id)
      VALUES (of_kind, NEW.id, 'pg_net', net_request);
    ELSIF realtime_schema IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_proc WHERE proname = 'publish' AND pronamespace = realtime_schema) THEN
      EXECUTE 'SELECT realtime.publish($1, $2, $3)'
        USING coalesce(planbus_private.setting('realtime_channel'), 'planbus'), of_kind || '_request_inserted', payload;
    ELSE
      PERFORM pg_notify('planbus_events', payload::text);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'planbus webhook for % request % not sent (the sweeper will pick it up): % (%)',
      of_kind, NEW.id, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$$;

-- BEFORE INSERT on every kind's table (TG_ARGV[0]: the kind): the per-user daily count of migration 0009,
-- with the same rules (who is counted: the roles row-level security applies to; the limit: the stored
-- 'daily_<kind>_request_limit', 'unlimited', or the kind's default when absent, malformed or unreadable),
-- read here directly rather than through daily_limit_applies_to() and daily_request_limit(), which stay
-- for planbus_daily_request_limit() and the operator.
CREATE OR REPLACE FUNCTION planbus_private.enforce_daily_request_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_kind text := TG_ARGV[0];
  caller text := coalesce(nullif(current_setting('role', true), 'none'), session_user);
  setting_name text := format('daily_%s_request_limit', of_kind);
  counted boolean;
  stored text;
  day_limit int;
  used int;
BEGIN
  SELECT NOT (r.rolsuper OR r.rolbypassrls OR pg_has_role(r.oid, c.relowner, 'MEMBER')) INTO counted
    FROM pg_roles r, pg_class c
   WHERE r.rolname = caller AND c.oid = TG_RELID;
  IF counted IS FALSE THEN
    RETURN NEW;
  END IF;

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
