-- The AFTER INSERT webhook on plan_requests (contract section 4). One payload in the Supabase database
-- webhook format, delivered by the first path this database has:
--   1. pg_net (Supabase): net.http_post to the URL stored by deploy.sh, with the shared secret as a header;
--   2. realtime.publish (InsForge): the channel's webhook URLs receive it (they carry ?token=<secret>);
--   3. pg_notify('planbus_events', payload): the local relay of `planbus dev` forwards it.
-- URL and secret are read at run time from Vault where it exists, else from planbus_private.settings, so
-- neither is ever part of the trigger's text. The webhook is a hint: the sweeper finds rows it missed.

-- A stored setting: Vault's decrypted secret named 'planbus_<name>' first, then the private settings table.
CREATE OR REPLACE FUNCTION planbus_private.setting(p_name text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v text;
BEGIN
  IF to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
    EXECUTE 'SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = $1 LIMIT 1'
      INTO v USING 'planbus_' || p_name;
    IF v IS NOT NULL THEN
      RETURN v;
    END IF;
  END IF;
  SELECT value INTO v FROM planbus_private.settings WHERE name = p_name;
  RETURN v;
END
$$;

-- Store a setting (deploy.sh): in Vault when present (created or updated; named args, since Vault's
-- functions have grown optional parameters across versions), else in the settings table.
-- Returns {stored: 'vault'|'settings'}. A name that is not lower_snake_case or a null value is refused.
CREATE OR REPLACE FUNCTION public.planbus_store_setting(p_name text, p_value text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  existing uuid;
BEGIN
  PERFORM planbus_private.require(p_name ~ '^[a-z][a-z0-9_]*$', format('not a setting name: %s', p_name));
  PERFORM planbus_private.require(p_value IS NOT NULL, format('setting %s needs a value', p_name));
  IF to_regclass('vault.secrets') IS NOT NULL AND EXISTS (
      SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = 'vault' AND p.proname = 'create_secret') THEN
    EXECUTE 'SELECT id FROM vault.secrets WHERE name = $1' INTO existing USING 'planbus_' || p_name;
    IF existing IS NULL THEN
      EXECUTE 'SELECT vault.create_secret(new_secret => $1, new_name => $2, new_description => $3)'
        USING p_value, 'planbus_' || p_name, 'planbus setting';
    ELSE
      EXECUTE 'SELECT vault.update_secret(secret_id => $1, new_secret => $2)' USING existing, p_value;
    END IF;
    DELETE FROM planbus_private.settings WHERE name = p_name;
    RETURN jsonb_build_object('stored', 'vault');
  END IF;
  INSERT INTO planbus_private.settings (name, value) VALUES (p_name, p_value)
  ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
  RETURN jsonb_build_object('stored', 'settings');
END
$$;

-- The webhook is a hint (the sweeper finds rows it missed), so a delivery path that fails (pg_net
-- misconfigured, Vault unreadable) must not refuse the Mini App's insert: it is logged as a WARNING.
CREATE OR REPLACE FUNCTION planbus_private.dispatch_plan_request() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  payload jsonb := jsonb_build_object(
    'type', TG_OP,
    'table', TG_TABLE_NAME,
    'schema', TG_TABLE_SCHEMA,
    'record', to_jsonb(NEW),
    'old_record', NULL
  );
  url text;
BEGIN
  BEGIN
    url := planbus_private.setting('webhook_url');
    IF url IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'net' AND p.proname = 'http_post') THEN
      EXECUTE 'SELECT net.http_post(url := $1, body := $2, headers := $3, timeout_milliseconds := $4)'
        USING url, payload,
              jsonb_build_object('Content-Type', 'application/json',
                                 'X-Webhook-Secret', coalesce(planbus_private.setting('webhook_secret'), '')),
              5000;
    ELSIF EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'realtime' AND p.proname = 'publish') THEN
      EXECUTE 'SELECT realtime.publish($1, $2, $3)'
        USING coalesce(planbus_private.setting('realtime_channel'), 'planbus'), 'plan_request_inserted', payload;
    ELSE
      PERFORM pg_notify('planbus_events', payload::text);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'planbus webhook for plan request % not sent (the sweeper will pick it up): % (%)',
      NEW.id, SQLERRM, SQLSTATE;
  END;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS plan_requests_webhook ON public.plan_requests;
CREATE TRIGGER plan_requests_webhook
  AFTER INSERT ON public.plan_requests
  FOR EACH ROW WHEN (NEW.status = 'pending')
  EXECUTE FUNCTION planbus_private.dispatch_plan_request();

SELECT planbus_private.secure_functions();
