-- The draft kind: a ready-to-send message for one step of a lead's current plan, optionally written from a
-- screenshot of the conversation so far. Same columns, contract, row-level security and state machine as
-- plan_requests (migration 0009 registers it); at most one active draft per lead and step.
--
-- `proof_url` is untrusted input and is never fetched by the database: the worker checks it (https, at most
-- 2,048 characters, an allowed host) and fails the request at once with a clear error when it is refused.

CREATE TABLE IF NOT EXISTS public.draft_requests (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  lead_id          uuid NOT NULL REFERENCES public.leads (id) ON DELETE CASCADE,
  telegram_id      bigint NOT NULL,
  -- The plan step to draft for: 0-based, as reminders.step_index (a step the plan lacks fails the request).
  step_index       int NOT NULL CHECK (step_index >= 0),
  proof_url        text,
  instructions     text CHECK (length(instructions) <= 2000),
  status           text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
  result           jsonb,
  error            text,
  attempts         int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  run_after        timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT draft_requests_result_only_when_completed CHECK ((status = 'completed') = (result IS NOT NULL)),
  CONSTRAINT draft_requests_failed_has_error CHECK (status <> 'failed' OR error IS NOT NULL),
  CONSTRAINT draft_requests_lease_only_when_processing
    CHECK ((status = 'processing') = (lease_expires_at IS NOT NULL))
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);

-- At most one active draft per lead and step; a second insert is a unique violation (PostgREST: 409).
CREATE UNIQUE INDEX IF NOT EXISTS draft_requests_one_active_per_step
  ON public.draft_requests (lead_id, step_index) WHERE status IN ('pending', 'processing');
CREATE INDEX IF NOT EXISTS draft_requests_pending_run_after
  ON public.draft_requests (run_after) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS draft_requests_processing_lease
  ON public.draft_requests (lease_expires_at) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS draft_requests_finished_updated_at
  ON public.draft_requests (updated_at) WHERE status IN ('completed', 'failed');
CREATE INDEX IF NOT EXISTS draft_requests_telegram_id_created_at
  ON public.draft_requests (telegram_id, created_at);

-- Row-level security exactly as for plan_requests (migration 0005): own lead, own telegram id, only
-- 'pending' with no result, error or attempts; read own rows; never update or delete; anon nothing.
ALTER TABLE public.draft_requests ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.draft_requests FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.draft_requests TO authenticated;
GRANT INSERT (id, lead_id, telegram_id, step_index, proof_url, instructions, status)
  ON public.draft_requests TO authenticated;
GRANT ALL ON public.draft_requests TO service_role;

DROP POLICY IF EXISTS draft_requests_select_own ON public.draft_requests;
CREATE POLICY draft_requests_select_own ON public.draft_requests
  FOR SELECT TO authenticated
  USING (telegram_id = (SELECT public.planbus_current_telegram_id()));

DROP POLICY IF EXISTS draft_requests_insert_own ON public.draft_requests;
CREATE POLICY draft_requests_insert_own ON public.draft_requests
  FOR INSERT TO authenticated
  WITH CHECK (
    telegram_id = (SELECT public.planbus_current_telegram_id())
    AND status = 'pending'
    AND result IS NULL AND error IS NULL AND attempts = 0
    AND EXISTS (
      SELECT 1 FROM public.leads l
       WHERE l.id = lead_id AND l.telegram_id = (SELECT public.planbus_current_telegram_id()))
  );

-- The draft's completion step: the result is stored by planbus_complete_request; this puts the draft into
-- the reminder of the step it was written for, if that reminder is still scheduled and its plan is still
-- the lead's current plan (a newer plan has other steps: its reminders are left alone).
-- p_completion: {plan_request_id: the plan the step was read from, step_index, reminder_text: non-empty}.
-- Returns {reminders_updated: 0 or 1}.
CREATE OR REPLACE FUNCTION planbus_private.complete_draft_request(p_request jsonb, p_completion jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  of_lead uuid := (p_request ->> 'lead_id')::uuid;
  step int := (p_request ->> 'step_index')::int;
  text_now text := p_completion ->> 'reminder_text';
  of_plan uuid := (p_completion ->> 'plan_request_id')::uuid;
  updated int := 0;
BEGIN
  PERFORM planbus_private.require(length(btrim(coalesce(text_now, ''))) > 0,
    'p_completion.reminder_text must be a non-empty text');
  PERFORM planbus_private.require((p_completion ->> 'step_index')::int IS NOT DISTINCT FROM step,
    'p_completion.step_index must be the request''s step_index');
  IF of_plan IS NOT NULL THEN
    UPDATE public.reminders m
       SET text = text_now
      FROM public.leads l
     WHERE l.id = of_lead AND l.plan_request_id = of_plan
       AND m.plan_request_id = of_plan AND m.step_index = step AND m.status = 'scheduled';
    GET DIAGNOSTICS updated = ROW_COUNT;
  END IF;
  RETURN jsonb_build_object('reminders_updated', updated);
END
$$;

SELECT planbus_private.register_request_kind(
  'draft', 'draft_requests', 'planbus_private.complete_draft_request(jsonb, jsonb)', 50);

-- Store the default explicitly, so the limit in force is visible; an existing value is kept.
DO $$
BEGIN
  IF planbus_private.setting('daily_draft_request_limit') IS NULL THEN
    INSERT INTO planbus_private.settings (name, value) VALUES ('daily_draft_request_limit', '50')
    ON CONFLICT (name) DO NOTHING;
  END IF;
END
$$;

SELECT planbus_private.secure_functions();
