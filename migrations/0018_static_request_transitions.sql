-- The worker's two transitions without dynamic SQL, same behaviour: what the throughput benchmark found
-- each request paying for.
--   claim, complete       migration 0009 looks the kind up in the registry and builds its statements with
--                         EXECUTE format(...) on every call, so each is parsed and planned again, and the
--                         completion step is called the same way. Now every registered kind gets its own
--                         pair of functions with the table and the completion step written in
--                         (planbus_private.kind_claim_<kind>, kind_complete_<kind>), whose plans PL/pgSQL
--                         keeps for the session, and planbus_claim_request / planbus_complete_request are
--                         generated to hand each kind to its pair. A change to the registry (registering a
--                         kind, re-registering one with another step) generates them again, by a trigger,
--                         so registering a kind stays one call of register_request_kind.
--                         The claim also reads the row and its lead in one statement.
--   the closed statuses   closed_lead_statuses (0012, run by the lead's trigger whenever a completion
--                         changes the lead's status) enters the subtransaction that guards a failing Vault
--                         only where Vault exists, and the one that guards a malformed value only when a
--                         value is stored; the rules and warnings are unchanged.
-- Fencing is unchanged: completion is accepted only from the live attempt (status 'processing', attempts
-- = the claim's attempt, lease not expired), and every argument check keeps its message and SQLSTATE 22023.

-- -- per-kind transitions --------------------------------------------------------------------------------

-- The claim of one kind, as planbus_claim_request of migration 0009 describes it. %1$s: the table,
-- %2$L: the kind. Not SECURITY DEFINER: only the generated planbus_claim_request calls it, as its owner
-- and with its search_path (every name below is qualified anyway).
CREATE OR REPLACE FUNCTION planbus_private.claim_function_source(p_kind text, p_table text) RETURNS text
LANGUAGE sql IMMUTABLE AS $gen$
SELECT format($src$
CREATE OR REPLACE FUNCTION planbus_private.%3$I(p_request_id uuid, p_lease_seconds int, p_max_attempts int)
RETURNS jsonb
LANGUAGE plpgsql AS $body$
DECLARE
  answer jsonb;
  r record;
  reason text;
BEGIN
  IF p_request_id IS NULL THEN
    RAISE EXCEPTION 'p_request_id is required' USING ERRCODE = '22023';
  END IF;
  IF (p_lease_seconds > 0) IS NOT TRUE THEN
    RAISE EXCEPTION 'p_lease_seconds must be positive' USING ERRCODE = '22023';
  END IF;
  IF (p_max_attempts > 0) IS NOT TRUE THEN
    RAISE EXCEPTION 'p_max_attempts must be positive' USING ERRCODE = '22023';
  END IF;

  -- The common case in one statement: a pending row whose time has come, with its lead. Concurrent
  -- claimers queue on the row lock; each later one re-checks this condition against the winner's update
  -- and falls through.
  WITH claimed AS (
    UPDATE %1$s t
       SET status = 'processing', attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds), error = NULL
     WHERE t.id = p_request_id AND t.status = 'pending' AND t.run_after <= now() AND t.attempts < p_max_attempts
    RETURNING t.*)
  SELECT jsonb_build_object('claimed', true, 'attempt', c.attempts, 'request', to_jsonb(c),
                            'lead', (SELECT to_jsonb(l) FROM public.leads l WHERE l.id = c.lead_id))
    INTO answer FROM claimed c;
  IF answer IS NOT NULL THEN
    RETURN answer;
  END IF;

  -- The row lock serialises the slower paths too: the second claimer waits, then sees the first's claim.
  SELECT id, status, attempts, run_after, lease_expires_at INTO r FROM %1$s WHERE id = p_request_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('claimed', false, 'status', NULL, 'reason', 'unknown request');
  END IF;
  IF r.status IN ('completed', 'failed') THEN
    RETURN jsonb_build_object('claimed', false, 'status', r.status, 'reason', 'already ' || r.status);
  END IF;
  IF r.status = 'processing' AND r.lease_expires_at > now() THEN
    RETURN jsonb_build_object('claimed', false, 'status', r.status,
      'reason', format('held by another worker until %%s', r.lease_expires_at));
  END IF;
  IF r.status = 'pending' AND r.run_after > now() THEN
    RETURN jsonb_build_object('claimed', false, 'status', r.status,
      'reason', format('retry scheduled at %%s', r.run_after));
  END IF;

  -- A takeover: the attempt that held the lease never reported back. It goes into the error history.
  IF r.status = 'processing' THEN
    PERFORM planbus_private.record_request_error(%2$L, r.id, r.attempts,
      format('lease expired during attempt %%s', r.attempts));
  END IF;

  IF r.attempts >= p_max_attempts THEN
    reason := format('gave up after %%s attempts: %%s', r.attempts, CASE
      WHEN r.status = 'processing' THEN 'the lease expired before the worker finished'
      ELSE 'no attempts left' END);
    UPDATE %1$s SET status = 'failed', lease_expires_at = NULL, error = reason WHERE id = r.id;
    PERFORM planbus_private.record_request_error(%2$L, r.id, r.attempts, reason);
    RETURN jsonb_build_object('claimed', false, 'status', 'failed', 'reason', reason);
  END IF;

  WITH claimed AS (
    UPDATE %1$s t
       SET status = 'processing', attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds), error = NULL
     WHERE t.id = r.id
    RETURNING t.*)
  SELECT jsonb_build_object('claimed', true, 'attempt', c.attempts, 'request', to_jsonb(c),
                            'lead', (SELECT to_jsonb(l) FROM public.leads l WHERE l.id = c.lead_id))
    INTO answer FROM claimed c;
  RETURN answer;
END
$body$
$src$, format('public.%I', p_table), p_kind, 'kind_claim_' || p_kind)
$gen$;

-- The completion of one kind, as planbus_complete_request of migration 0009 describes it, with the kind's
-- completion step called by name. %1$s: the table, %2$s: the step, %3$I: the function.
CREATE OR REPLACE FUNCTION planbus_private.complete_function_source(p_kind text, p_table text, p_step regprocedure)
RETURNS text
LANGUAGE sql STABLE AS $gen$
SELECT format($src$
CREATE OR REPLACE FUNCTION planbus_private.%3$I(
  p_request_id uuid, p_attempt int, p_result jsonb, p_completion jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $body$
DECLARE
  completion jsonb := coalesce(p_completion, '{}');
  done jsonb;
  now_status text;
BEGIN
  IF (jsonb_typeof(p_result) = 'object') IS NOT TRUE THEN
    RAISE EXCEPTION 'p_result must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF (jsonb_typeof(completion) = 'object') IS NOT TRUE THEN
    RAISE EXCEPTION 'p_completion must be a JSON object' USING ERRCODE = '22023';
  END IF;

  UPDATE %1$s t
     SET status = 'completed', result = p_result, error = NULL, lease_expires_at = NULL
   WHERE t.id = p_request_id AND t.status = 'processing' AND t.attempts = p_attempt AND t.lease_expires_at > now()
  RETURNING to_jsonb(t) INTO done;
  IF done IS NULL THEN
    SELECT t.status INTO now_status FROM %1$s t WHERE t.id = p_request_id;
    RETURN jsonb_build_object('completed', false, 'status', now_status,
      'reason', 'the claim is no longer held (lease expired or taken over)');
  END IF;

  RETURN jsonb_build_object('completed', true) || coalesce(%2$s(done, completion), '{}');
END
$body$
$src$, format('public.%I', p_table), p_step::regproc, 'kind_complete_' || p_kind)
$gen$;

-- Generate every registered kind's pair, and the two public transitions that hand each kind to its pair
-- (an unknown kind raises 22023 'unknown request kind: <kind>', as request_kind() does). Pairs of kinds no
-- longer registered are dropped.
CREATE OR REPLACE FUNCTION planbus_private.generate_request_transitions() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  k planbus_private.request_kinds;
  claims text := '';
  completes text := '';
  gone regprocedure;
BEGIN
  FOR k IN SELECT * FROM planbus_private.request_kinds ORDER BY kind LOOP
    EXECUTE planbus_private.claim_function_source(k.kind, k.table_name);
    EXECUTE planbus_private.complete_function_source(k.kind, k.table_name, k.complete_function);
    claims := claims || format(E'\n  IF p_kind = %L THEN\n    RETURN planbus_private.%I(p_request_id, p_lease_seconds, p_max_attempts);\n  END IF;',
                               k.kind, 'kind_claim_' || k.kind);
    completes := completes || format(E'\n  IF p_kind = %L THEN\n    RETURN planbus_private.%I(p_request_id, p_attempt, p_result, p_completion);\n  END IF;',
                                     k.kind, 'kind_complete_' || k.kind);
  END LOOP;

  FOR gone IN
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.pronamespace = 'planbus_private'::regnamespace
       AND (p.proname LIKE 'kind\_claim\_%' OR p.proname LIKE 'kind\_complete\_%')
              AND NOT EXISTS (SELECT 1 FROM planbus_private.request_kinds r
                        WHERE p.proname IN ('kind_claim_' || r.kind, 'kind_complete_' || r.kind))
  LOOP
    EXECUTE format('DROP FUNCTION %s', gone);
  END LOOP;

  -- The descriptions are migration 0009's: claim a request of a kind by id, complete the claimed attempt.
  EXECUTE format($src$
CREATE OR REPLACE FUNCTION public.planbus_claim_request(
  p_kind text, p_request_id uuid, p_lease_seconds int, p_max_attempts int
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $body$
BEGIN%s
  PERFORM planbus_private.request_kind(p_kind);  -- raises for an unknown kind
  RAISE EXCEPTION 'request kind %% has no generated transitions', p_kind USING ERRCODE = '22023';
END
$body$ $src$, claims);
  EXECUTE format($src$
CREATE OR REPLACE FUNCTION public.planbus_complete_request(
  p_kind text, p_request_id uuid, p_attempt int, p_result jsonb, p_completion jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $body$
BEGIN%s
  PERFORM planbus_private.request_kind(p_kind);  -- raises for an unknown kind
  RAISE EXCEPTION 'request kind %% has no generated transitions', p_kind USING ERRCODE = '22023';
END
$body$ $src$, completes);

  PERFORM planbus_private.secure_functions();
END
$$;

CREATE OR REPLACE FUNCTION planbus_private.regenerate_request_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM planbus_private.generate_request_transitions();
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS request_kinds_generate_transitions ON planbus_private.request_kinds;
CREATE TRIGGER request_kinds_generate_transitions
  AFTER INSERT OR UPDATE OR DELETE ON planbus_private.request_kinds
  FOR EACH STATEMENT EXECUTE FUNCTION planbus_private.regenerate_request_transitions();

SELECT planbus_private.generate_request_transitions();

-- -- the plan's completion step ----------------------------------------------------------------------------

-- Migration 0009's step, with the same checks, messages and writes. The schedule is first checked in one
-- pass for what a valid schedule from the worker is (objects whose step_index is written as a whole
-- number 0..1000, each once, with a due_at string and a non-empty text); only one that is not goes through
-- check_reminders (0014), which names its first offending element. A due_at that is a string but no
-- timestamp then fails the insert's cast, in the same order and with the same error as the check's cast.
CREATE OR REPLACE FUNCTION planbus_private.complete_plan_request(p_request jsonb, p_completion jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  request_id uuid := (p_request ->> 'id')::uuid;
  of_lead uuid := (p_request ->> 'lead_id')::uuid;
  new_plan jsonb := p_completion -> 'plan';
  schedule jsonb := coalesce(nullif(p_completion -> 'reminders', 'null'::jsonb), '[]'::jsonb);
  owner bigint;
  cancelled int;
  scheduled int;
BEGIN
  IF new_plan IS NULL OR jsonb_typeof(new_plan) = 'null' THEN
    RAISE EXCEPTION 'p_completion.plan is required' USING ERRCODE = '22023';
  END IF;
  IF jsonb_typeof(schedule) <> 'array' OR NOT (
      SELECT coalesce(bool_and(checks.ok IS TRUE), true) AND count(DISTINCT checks.step) = count(*)
        FROM (SELECT CASE WHEN jsonb_typeof(e.item) = 'object'
                            AND jsonb_typeof(e.item -> 'step_index') = 'number'
                            AND (e.item ->> 'step_index') ~ '^[0-9]{1,4}$'
                          THEN (e.item ->> 'step_index')::int <= 1000
                            AND jsonb_typeof(e.item -> 'due_at') = 'string'
                            AND length(btrim(coalesce(e.item ->> 'text', ''))) > 0
                          ELSE false END AS ok,
                     e.item ->> 'step_index' AS step
                FROM jsonb_array_elements(schedule) AS e(item)) checks) THEN
    PERFORM planbus_private.check_reminders(schedule);
  END IF;

  UPDATE public.leads
     SET status = 'plan_ready', plan = new_plan, plan_generated_at = now(), plan_request_id = request_id
   WHERE id = of_lead
  RETURNING telegram_id INTO owner;

  UPDATE public.reminders
     SET status = 'cancelled', error = format('superseded by plan request %s', request_id)
   WHERE lead_id = of_lead AND status = 'scheduled' AND plan_request_id <> request_id;
  GET DIAGNOSTICS cancelled = ROW_COUNT;

  INSERT INTO public.reminders (lead_id, telegram_id, plan_request_id, step_index, due_at, text)
  SELECT of_lead, owner, request_id, x.step_index, x.due_at, x.text
    FROM jsonb_to_recordset(schedule) AS x(step_index int, due_at timestamptz, text text);
  GET DIAGNOSTICS scheduled = ROW_COUNT;

  RETURN jsonb_build_object('reminders', scheduled, 'cancelled_reminders', cancelled);
END
$$;

-- -- the closed statuses ----------------------------------------------------------------------------------

-- As migration 0012's: absent, malformed or unreadable, the default applies, with a WARNING for the last
-- two. The subtransactions are entered only where they can catch something.
CREATE OR REPLACE FUNCTION planbus_private.closed_lead_statuses() RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  stored text;
  statuses text[];
BEGIN
  IF to_regclass('vault.decrypted_secrets') IS NOT NULL THEN
    BEGIN
      stored := planbus_private.setting('closed_lead_statuses');
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'closed_lead_statuses unreadable, the default applies: % (%)', SQLERRM, SQLSTATE;
      RETURN planbus_private.default_closed_lead_statuses();
    END;
  ELSE
    SELECT s.value INTO stored FROM planbus_private.settings s WHERE s.name = 'closed_lead_statuses';
  END IF;
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

-- Migration 0012's trigger, with is_closed_lead_status()'s test written in: one SECURITY DEFINER call
-- (closed_lead_statuses) per status change instead of two nested ones.
CREATE OR REPLACE FUNCTION planbus_private.cancel_reminders_of_closed_lead() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  IF lower(btrim(NEW.status, E' \t\r\n')) = ANY (planbus_private.closed_lead_statuses()) THEN
    UPDATE public.reminders
       SET status = 'cancelled', error = format('lead closed: %s', btrim(NEW.status, E' \t\r\n'))
     WHERE lead_id = NEW.id AND status = 'scheduled';
  END IF;
  RETURN NULL;
END
$$;

SELECT planbus_private.secure_functions();
