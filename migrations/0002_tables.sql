-- The lead registry, the plan request queue, reminders, and the Telegram user mapping (contract section 4).

CREATE TABLE IF NOT EXISTS public.leads (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  telegram_id       bigint NOT NULL,
  full_name         text NOT NULL,
  company           text,
  title             text,
  notes             text,
  status            text,
  plan              jsonb,
  plan_generated_at timestamptz,
  plan_request_id   uuid,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS leads_telegram_id ON public.leads (telegram_id);

CREATE TABLE IF NOT EXISTS public.telegram_users (
  user_id     uuid PRIMARY KEY,
  telegram_id bigint NOT NULL UNIQUE,
  username    text,
  first_name  text,
  last_name   text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.plan_requests (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  lead_id          uuid NOT NULL REFERENCES public.leads (id) ON DELETE CASCADE,
  telegram_id      bigint NOT NULL,
  status           text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
  result           jsonb,
  error            text,
  attempts         int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  -- Internals of the state machine: when a pending row may next be claimed, and when a claim expires.
  run_after        timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT plan_requests_result_only_when_completed CHECK ((status = 'completed') = (result IS NOT NULL)),
  -- The Mini App shows `error` for a failed request: a failure without a reason is refused.
  CONSTRAINT plan_requests_failed_has_error CHECK (status <> 'failed' OR error IS NOT NULL),
  CONSTRAINT plan_requests_lease_only_when_processing
    CHECK ((status = 'processing') = (lease_expires_at IS NOT NULL))
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);

-- At most one active request per lead; a second insert is a unique violation (PostgREST: 409).
CREATE UNIQUE INDEX IF NOT EXISTS plan_requests_one_active_per_lead
  ON public.plan_requests (lead_id) WHERE status IN ('pending', 'processing');
-- Hot look-ups stay independent of table size: only active rows are indexed.
CREATE INDEX IF NOT EXISTS plan_requests_pending_run_after
  ON public.plan_requests (run_after) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS plan_requests_processing_lease
  ON public.plan_requests (lease_expires_at) WHERE status = 'processing';
CREATE INDEX IF NOT EXISTS plan_requests_finished_updated_at
  ON public.plan_requests (updated_at) WHERE status IN ('completed', 'failed');
CREATE INDEX IF NOT EXISTS plan_requests_telegram_id_created_at
  ON public.plan_requests (telegram_id, created_at);

CREATE TABLE IF NOT EXISTS public.reminders (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  lead_id          uuid NOT NULL REFERENCES public.leads (id) ON DELETE CASCADE,
  telegram_id      bigint NOT NULL,
  plan_request_id  uuid NOT NULL REFERENCES public.plan_requests (id) ON DELETE CASCADE,
  step_index       int NOT NULL CHECK (step_index >= 0),
  due_at           timestamptz NOT NULL,
  text             text NOT NULL,
  -- 'sending' is the in-flight state of a claimed reminder, held until lease_expires_at.
  status           text NOT NULL DEFAULT 'scheduled'
                   CHECK (status IN ('scheduled', 'sending', 'sent', 'cancelled', 'failed')),
  attempts         int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  lease_expires_at timestamptz,
  sent_at          timestamptz,
  delivered_via    text CHECK (delivered_via IN ('telegram', 'outbox')),
  error            text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT reminders_one_per_step UNIQUE (plan_request_id, step_index)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);

CREATE INDEX IF NOT EXISTS reminders_scheduled_due_at
  ON public.reminders (due_at) WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS reminders_sending_lease
  ON public.reminders (lease_expires_at) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS reminders_scheduled_lead
  ON public.reminders (lead_id) WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS reminders_sent_at
  ON public.reminders (sent_at) WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS reminders_telegram_id ON public.reminders (telegram_id);

-- Internals: error history per request, settings, and the local Telegram outbox.
CREATE TABLE IF NOT EXISTS planbus_private.plan_request_errors (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id uuid NOT NULL REFERENCES public.plan_requests (id) ON DELETE CASCADE,
  attempt    int NOT NULL,
  at         timestamptz NOT NULL DEFAULT now(),
  message    text NOT NULL
);
CREATE INDEX IF NOT EXISTS plan_request_errors_request ON planbus_private.plan_request_errors (request_id);
CREATE INDEX IF NOT EXISTS plan_request_errors_at ON planbus_private.plan_request_errors (at);

CREATE TABLE IF NOT EXISTS planbus_private.settings (
  name       text PRIMARY KEY,
  value      text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS planbus_private.telegram_outbox (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  reminder_id uuid REFERENCES public.reminders (id) ON DELETE SET NULL,
  chat_id     bigint NOT NULL,
  text        text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keep updated_at honest whoever writes the row.
CREATE OR REPLACE FUNCTION planbus_private.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS leads_touch ON public.leads;
CREATE TRIGGER leads_touch BEFORE UPDATE ON public.leads
  FOR EACH ROW EXECUTE FUNCTION planbus_private.touch_updated_at();
DROP TRIGGER IF EXISTS plan_requests_touch ON public.plan_requests;
CREATE TRIGGER plan_requests_touch BEFORE UPDATE ON public.plan_requests
  FOR EACH ROW EXECUTE FUNCTION planbus_private.touch_updated_at();
DROP TRIGGER IF EXISTS reminders_touch ON public.reminders;
CREATE TRIGGER reminders_touch BEFORE UPDATE ON public.reminders
  FOR EACH ROW EXECUTE FUNCTION planbus_private.touch_updated_at();
DROP TRIGGER IF EXISTS telegram_users_touch ON public.telegram_users;
CREATE TRIGGER telegram_users_touch BEFORE UPDATE ON public.telegram_users
  FOR EACH ROW EXECUTE FUNCTION planbus_private.touch_updated_at();
