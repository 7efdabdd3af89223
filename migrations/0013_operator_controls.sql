-- What an operator needs when webhooks fail: delivery failures in planbus_status, and three verbs on one
-- request of any kind (show, retry, list), each one SQL function so the CLI works over a direct connection
-- and over Supabase REST alike.
--
-- A delivery failure is one of:
--   refused_401       the function answered 401 (a wrong or missing webhook secret)
--   server_error      it answered 5xx
--   client_error      it answered another non-2xx (404: a wrong URL, 405, 413, ...)
--   timeout           no answer in time
--   connection_error  no connection (DNS, refused, TLS)
--   enqueue_failed    in Cloud Tasks mode, the webhook could not create the attempt's task
-- read from pg_net's net._http_response (tied to the request through webhook_deliveries.net_request_id;
-- pg_net keeps responses about 6 hours, so older pg_net failures are no longer counted), from the Cloud
-- Tasks enqueue failures and from the local relay's give-ups (both recorded with planbus_record_delivery).
-- The sweeper records each request it re-dispatched as lost (channel 'sweeper', outcome 'recovered_lost').
-- Every part reads an index range over created_at: the functions' own records through a partial index
-- that leaves out the pg_net rows (one per request), pg_net's answers through its index on
-- net._http_response.created (pg_net keeps hours of them), each failed one tied to its delivery through
-- net_request_id. So planbus_status stays fast however many finished rows there are.

ALTER TABLE planbus_private.webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_channel_check;
ALTER TABLE planbus_private.webhook_deliveries ADD CONSTRAINT webhook_deliveries_channel_check
  CHECK (channel IN ('pg_net', 'cloud_tasks', 'relay', 'sweeper'));
-- `planbus requests show` finds a request's deliveries; planbus_status reads the functions' own records
-- without the pg_net rows (one per request) and ties pg_net's failed answers to their requests.
CREATE INDEX IF NOT EXISTS webhook_deliveries_request ON planbus_private.webhook_deliveries (request_id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_recorded_at
  ON planbus_private.webhook_deliveries (created_at) WHERE channel <> 'pg_net';
CREATE INDEX IF NOT EXISTS webhook_deliveries_net_request
  ON planbus_private.webhook_deliveries (net_request_id) WHERE net_request_id IS NOT NULL;

CREATE OR REPLACE FUNCTION public.planbus_record_delivery(
  p_kind text, p_request_id uuid, p_channel text, p_outcome text, p_detail text
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  delivery bigint;
BEGIN
  PERFORM planbus_private.request_kind(p_kind);
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  PERFORM planbus_private.require(p_channel IN ('pg_net', 'cloud_tasks', 'relay', 'sweeper'),
    'p_channel must be ''pg_net'', ''cloud_tasks'', ''relay'' or ''sweeper''');
  PERFORM planbus_private.require(length(btrim(p_outcome)) > 0, 'p_outcome must be a non-empty word');
  INSERT INTO planbus_private.webhook_deliveries (kind, request_id, channel, outcome, detail)
  VALUES (p_kind, p_request_id, p_channel, p_outcome, left(p_detail, 2000))
  RETURNING id INTO delivery;
  RETURN jsonb_build_object('recorded', true, 'id', delivery);
END
$$;

-- The cause of one pg_net answer (NULL for a 2xx).
CREATE OR REPLACE FUNCTION planbus_private.pg_net_cause(p_status_code int, p_timed_out boolean, p_error text)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN p_timed_out OR p_error ILIKE '%timeout%' OR p_error ILIKE '%timed out%' THEN 'timeout'
    WHEN p_status_code IS NULL THEN 'connection_error'
    WHEN p_status_code BETWEEN 200 AND 299 THEN NULL
    WHEN p_status_code = 401 THEN 'refused_401'
    WHEN p_status_code >= 500 THEN 'server_error'
    ELSE 'client_error'
  END
$$;

-- The cause of a delivery a function recorded (NULL when it is no failure: the sweeper's records).
CREATE OR REPLACE FUNCTION planbus_private.recorded_cause(p_channel text, p_outcome text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN p_channel = 'cloud_tasks' AND p_outcome = 'enqueue_failed' THEN 'enqueue_failed'
    WHEN p_channel = 'relay' AND p_outcome IN ('refused_401', 'server_error', 'client_error', 'timeout',
                                                'connection_error') THEN p_outcome
  END
$$;

-- Every failed delivery since p_since: (kind, request_id, channel, cause, at, detail). pg_net's table is
-- read only where pg_net is installed, through dynamic SQL so this compiles without it.
CREATE OR REPLACE FUNCTION planbus_private.delivery_failures(p_since timestamptz)
RETURNS TABLE (kind text, request_id uuid, channel text, cause text, at timestamptz, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  RETURN QUERY
    SELECT d.kind, d.request_id, d.channel, planbus_private.recorded_cause(d.channel, d.outcome),
           d.created_at, d.detail
      FROM planbus_private.webhook_deliveries d
     WHERE d.created_at >= p_since AND d.channel <> 'pg_net' AND d.channel IN ('cloud_tasks', 'relay')
       AND planbus_private.recorded_cause(d.channel, d.outcome) IS NOT NULL;
  -- pg_net's failed answers first (its table holds hours, not days), then each one's delivery by id.
  IF to_regclass('net._http_response') IS NOT NULL THEN
    RETURN QUERY EXECUTE $sql$
      SELECT d.kind, d.request_id, d.channel,
             planbus_private.pg_net_cause(r.status_code, r.timed_out, r.error_msg),
             d.created_at,
             left(coalesce(r.error_msg, 'HTTP ' || r.status_code || coalesce(': ' || left(r.content, 200), '')), 300)
        FROM net._http_response r
        CROSS JOIN LATERAL (
          SELECT x.kind, x.request_id, x.channel, x.created_at FROM planbus_private.webhook_deliveries x
           WHERE x.net_request_id = r.id AND x.channel = 'pg_net' AND x.created_at >= $1
           ORDER BY x.id DESC LIMIT 1) d
       WHERE r.created >= $1
         AND planbus_private.pg_net_cause(r.status_code, r.timed_out, r.error_msg) IS NOT NULL$sql$
      USING p_since;
  END IF;
END
$$;

-- The deliveries section of planbus_status: {pg_net_responses: whether pg_net's answers are read,
-- last_5m: failures, last_hour / last_day: {total, causes: {cause: n}, kinds: {kind: {cause: n}}},
-- last_failure_at, last_failure: {kind, request_id, channel, cause, detail}, recovered_lost_24h: {total,
-- kinds: {kind: n}}}. Every cause is listed, 0 when it did not occur.
CREATE OR REPLACE FUNCTION planbus_private.delivery_status() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  causes constant text[] := ARRAY['refused_401', 'server_error', 'client_error', 'timeout', 'connection_error',
                                  'enqueue_failed'];
  zero jsonb := (SELECT jsonb_object_agg(c, 0) FROM unnest(causes) c);
  answer jsonb;
BEGIN
  WITH failures AS (
    SELECT * FROM planbus_private.delivery_failures(now() - interval '24 hours')
  ), windows AS (
    SELECT w.name, w.since FROM (VALUES ('last_hour', now() - interval '1 hour'),
                                        ('last_day', now() - interval '24 hours')) AS w(name, since)
  ), per_cause AS (
    SELECT w.name, f.kind, f.cause, count(*) AS n
      FROM windows w JOIN failures f ON f.at >= w.since
     GROUP BY w.name, f.kind, f.cause
  ), per_window AS (
    SELECT w.name,
           jsonb_build_object(
             'total', coalesce((SELECT sum(n) FROM per_cause p WHERE p.name = w.name), 0),
             'causes', zero || coalesce((
               SELECT jsonb_object_agg(c.cause, c.n)
                 FROM (SELECT cause, sum(n) AS n FROM per_cause p WHERE p.name = w.name GROUP BY cause) c), '{}'),
             'kinds', coalesce((
               SELECT jsonb_object_agg(k.kind, zero || k.by_cause)
                 FROM (SELECT kind, jsonb_object_agg(cause, n) AS by_cause
                         FROM per_cause p WHERE p.name = w.name GROUP BY kind) k), '{}')) AS body
      FROM windows w
  )
  SELECT jsonb_build_object(
           'pg_net_responses', to_regclass('net._http_response') IS NOT NULL,
           'last_5m', (SELECT count(*) FROM failures WHERE at >= now() - interval '5 minutes'),
           'last_failure_at', (SELECT max(at) FROM failures),
           'last_failure', (SELECT jsonb_build_object('kind', f.kind, 'request_id', f.request_id,
                                                      'channel', f.channel, 'cause', f.cause, 'detail', f.detail)
                              FROM failures f ORDER BY f.at DESC LIMIT 1))
         || (SELECT jsonb_object_agg(name, body) FROM per_window)
    INTO answer;

  RETURN answer || jsonb_build_object('recovered_lost_24h', (
    SELECT jsonb_build_object('total', count(DISTINCT (d.kind, d.request_id)),
                              'kinds', coalesce((
                                SELECT jsonb_object_agg(x.kind, x.n)
                                  FROM (SELECT e.kind, count(DISTINCT e.request_id) AS n
                                          FROM planbus_private.webhook_deliveries e
                                         WHERE e.created_at >= now() - interval '24 hours'
                                           AND e.channel <> 'pg_net' AND e.channel = 'sweeper'
                                           AND e.outcome = 'recovered_lost'
                                         GROUP BY e.kind) x), '{}'))
      FROM planbus_private.webhook_deliveries d
     WHERE d.created_at >= now() - interval '24 hours' AND d.channel <> 'pg_net' AND d.channel = 'sweeper'
       AND d.outcome = 'recovered_lost'));
END
$$;

-- Per kind: pending rows, the oldest one's age, and how long the longest-waiting runnable one has been
-- runnable (`oldest_due_seconds`: since its run_after, so a retry waiting for its backoff is not late).
-- Both come from the kind's partial index on pending rows.
CREATE OR REPLACE FUNCTION planbus_private.pending_by_kind() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds;
  answer jsonb := '{}';
  part jsonb;
BEGIN
  FOR k IN SELECT * FROM planbus_private.request_kinds ORDER BY kind LOOP
    EXECUTE format($sql$
      SELECT jsonb_build_object(
               'pending', count(*),
               'oldest_pending_seconds', round(extract(epoch FROM now() - min(created_at)), 1),
               'oldest_due_seconds',
                 round(extract(epoch FROM now() - min(run_after) FILTER (WHERE run_after <= now())), 1))
        FROM public.%I WHERE status = 'pending'$sql$, k.table_name)
      INTO part;
    answer := answer || jsonb_build_object(k.kind, part);
  END LOOP;
  RETURN answer;
END
$$;

-- planbus_status (migration 0009) with two more sections: `deliveries` (delivery_status above) and
-- `pending_by_kind` ({kind: {pending, oldest_pending_seconds, oldest_due_seconds}}).
-- The 0009 function is moved out of the way and wrapped, so its sections stay exactly as they are.
ALTER FUNCTION public.planbus_status() RENAME TO status_sections;
ALTER FUNCTION public.status_sections() SET SCHEMA planbus_private;

CREATE OR REPLACE FUNCTION public.planbus_status() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT planbus_private.status_sections()
         || jsonb_build_object('deliveries', planbus_private.delivery_status(),
                               'pending_by_kind', planbus_private.pending_by_kind())
$$;

-- -- operator verbs --------------------------------------------------------------------------------------

-- The kind whose table holds p_request_id (NULL when none does): one primary-key look-up per kind.
CREATE OR REPLACE FUNCTION planbus_private.kind_of_request(p_request_id uuid) RETURNS planbus_private.request_kinds
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds;
  hit boolean;
BEGIN
  FOR k IN SELECT * FROM planbus_private.request_kinds ORDER BY kind LOOP
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE id = $1)', k.table_name) INTO hit
      USING p_request_id;
    IF hit THEN
      RETURN k;
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

-- One request of any kind: {found: true, kind, request: the row, errors: its error history oldest first,
-- reminders: the reminders it scheduled, deliveries: its webhook deliveries oldest first, each with pg_net's
-- answer (status_code, timed_out, error_msg, cause) where pg_net has it}. {found: false, id} when no kind
-- has it.
CREATE OR REPLACE FUNCTION public.planbus_request_show(p_request_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds;
  request jsonb;
  deliveries jsonb;
BEGIN
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  k := planbus_private.kind_of_request(p_request_id);
  IF k.kind IS NULL THEN
    RETURN jsonb_build_object('found', false, 'id', p_request_id);
  END IF;
  EXECUTE format('SELECT to_jsonb(t) FROM public.%I t WHERE id = $1', k.table_name) INTO request
    USING p_request_id;

  IF to_regclass('net._http_response') IS NOT NULL THEN
    EXECUTE $sql$
      SELECT coalesce(jsonb_agg(to_jsonb(d) || jsonb_build_object(
                        'status_code', r.status_code, 'timed_out', r.timed_out, 'error_msg', r.error_msg,
                        'cause', CASE WHEN r.id IS NOT NULL
                                      THEN planbus_private.pg_net_cause(r.status_code, r.timed_out, r.error_msg)
                                 END)
                      ORDER BY d.created_at, d.id), '[]'::jsonb)
        FROM planbus_private.webhook_deliveries d
        LEFT JOIN net._http_response r ON r.id = d.net_request_id AND r.created >= d.created_at
       WHERE d.request_id = $1$sql$
      INTO deliveries USING p_request_id;
  ELSE
    SELECT coalesce(jsonb_agg(to_jsonb(d) || jsonb_build_object(
                      'cause', planbus_private.recorded_cause(d.channel, d.outcome))
                    ORDER BY d.created_at, d.id), '[]'::jsonb)
      INTO deliveries
      FROM planbus_private.webhook_deliveries d WHERE d.request_id = p_request_id;
  END IF;

  RETURN jsonb_build_object(
    'found', true,
    'kind', k.kind,
    'request', request,
    'errors', (SELECT coalesce(jsonb_agg(to_jsonb(e) - 'request_id' - 'kind' ORDER BY e.at, e.id), '[]'::jsonb)
                 FROM planbus_private.request_errors e WHERE e.request_id = p_request_id AND e.kind = k.kind),
    'reminders', (SELECT coalesce(jsonb_agg(to_jsonb(m) ORDER BY m.step_index, m.due_at), '[]'::jsonb)
                    FROM public.reminders m WHERE m.plan_request_id = p_request_id),
    'deliveries', deliveries);
END
$$;

-- A `failed` request back to `pending` with a fresh attempt budget (attempts 0, runnable now), the retry
-- and the error it had written to the error history (p_note: who or why, optional). Refused, changing
-- nothing, for any other state, an unknown id, or a lead that already has an active request of the kind.
-- The row lock orders a retry against a concurrent claim or sweep: a claim that queued behind it sees the
-- pending row and claims it once; one that ran first saw the row failed.
-- Returns {retried: true, kind, request: the row} or {retried: false, kind, status, reason}.
CREATE OR REPLACE FUNCTION public.planbus_retry_request(p_request_id uuid, p_note text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds;
  r record;
  found_rows int;
  retried jsonb;
BEGIN
  PERFORM planbus_private.require(p_request_id IS NOT NULL, 'p_request_id is required');
  k := planbus_private.kind_of_request(p_request_id);
  IF k.kind IS NULL THEN
    RETURN jsonb_build_object('retried', false, 'kind', NULL, 'status', NULL,
                              'reason', format('no request %s in any kind', p_request_id));
  END IF;
  EXECUTE format('SELECT status, attempts, error FROM public.%I WHERE id = $1 FOR UPDATE', k.table_name)
    INTO r USING p_request_id;
  GET DIAGNOSTICS found_rows = ROW_COUNT;
  IF found_rows = 0 THEN
    RETURN jsonb_build_object('retried', false, 'kind', k.kind, 'status', NULL,
                              'reason', format('no request %s in any kind', p_request_id));
  END IF;
  IF r.status <> 'failed' THEN
    RETURN jsonb_build_object('retried', false, 'kind', k.kind, 'status', r.status,
      'reason', format('request %s is %s: only a failed request can be retried', p_request_id, r.status));
  END IF;

  BEGIN
    EXECUTE format($sql$
      UPDATE public.%I t
         SET status = 'pending', attempts = 0, run_after = now(), lease_expires_at = NULL, error = NULL
       WHERE t.id = $1
      RETURNING to_jsonb(t)$sql$, k.table_name)
      INTO retried USING p_request_id;
  EXCEPTION WHEN unique_violation THEN
    RETURN jsonb_build_object('retried', false, 'kind', k.kind, 'status', r.status,
      'reason', format('request %s not retried: %s (another request of its lead is active)',
                       p_request_id, SQLERRM));
  END;
  PERFORM planbus_private.record_request_error(k.kind, p_request_id, r.attempts,
    format('retried by hand after %s attempt(s)%s; it had failed with: %s', r.attempts,
           CASE WHEN length(btrim(p_note)) > 0 THEN format(' (%s)', btrim(p_note)) ELSE '' END,
           coalesce(r.error, 'no error recorded')));
  RETURN jsonb_build_object('retried', true, 'kind', k.kind, 'request', retried);
END
$$;

-- Requests in p_status ('pending', 'processing', 'completed' or 'failed') updated since p_since, newest
-- first, of one kind (p_kind) or all, at most p_limit (1 to 1000). Finished rows come from each kind's
-- partial index on updated_at; active ones from the partial indexes on pending or processing rows.
-- Returns a JSON array of {kind, id, lead_id, telegram_id, status, attempts, error, created_at, updated_at}.
CREATE OR REPLACE FUNCTION public.planbus_list_requests(
  p_status text, p_since timestamptz, p_kind text DEFAULT NULL, p_limit int DEFAULT 100
) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  k planbus_private.request_kinds;
  rows jsonb := '[]';
  part jsonb;
BEGIN
  PERFORM planbus_private.require(p_status IN ('pending', 'processing', 'completed', 'failed'),
    'p_status must be ''pending'', ''processing'', ''completed'' or ''failed''');
  PERFORM planbus_private.require(p_since IS NOT NULL, 'p_since is required');
  PERFORM planbus_private.require(p_limit BETWEEN 1 AND 1000, 'p_limit must be from 1 to 1000');
  IF p_kind IS NOT NULL THEN
    PERFORM planbus_private.request_kind(p_kind);
  END IF;
  FOR k IN SELECT * FROM planbus_private.request_kinds WHERE p_kind IS NULL OR kind = p_kind ORDER BY kind LOOP
    EXECUTE format($sql$
      SELECT coalesce(jsonb_agg(x ORDER BY x.updated_at DESC, x.id), '[]'::jsonb)
        FROM (SELECT $4 AS kind, t.id, t.lead_id, t.telegram_id, t.status, t.attempts, t.error,
                     t.created_at, t.updated_at
                FROM public.%I t
               WHERE t.status = $1 AND t.updated_at >= $2
               ORDER BY t.updated_at DESC, t.id
               LIMIT $3) x$sql$, k.table_name)
      INTO part USING p_status, p_since, p_limit, k.kind;
    rows := rows || part;
  END LOOP;
  RETURN coalesce((SELECT jsonb_agg(x.value ORDER BY x.at DESC, x.value ->> 'id')
                     FROM (SELECT value, (value ->> 'updated_at')::timestamptz AS at
                             FROM jsonb_array_elements(rows)
                            ORDER BY 2 DESC, value ->> 'id' LIMIT p_limit) x), '[]'::jsonb);
END
$$;

SELECT planbus_private.secure_functions();
