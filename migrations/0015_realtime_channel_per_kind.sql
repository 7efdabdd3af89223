-- InsForge: each kind publishes on its own realtime channel. `planbus deploy` subscribes each kind's webhook
-- function to the channel stored as `realtime_channel_<kind>` (planbus-plan, planbus-draft); the trigger
-- published every kind on the one `realtime_channel`, so draft inserts reached handle_plan_request, which
-- skipped them, and waited for the sweeper. The trigger now reads the kind's channel first, then the
-- shared one (deployments made before per-kind channels), then 'planbus'. Nothing else changes: this is
-- 0014's trigger function with that one argument.

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
        USING coalesce(planbus_private.setting('realtime_channel_' || of_kind),
                       planbus_private.setting('realtime_channel'), 'planbus'),
              of_kind || '_request_inserted', payload;
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

SELECT planbus_private.secure_functions();
