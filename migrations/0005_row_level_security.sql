-- Mini App access (contract section 4, RLS). The Mini App talks to PostgREST as role `authenticated` with
-- its JWT claims in request.jwt.claims; the functions use service_role or the database owner.

-- The caller's Telegram id: the `telegram_id` claim, else the id mapped to `sub` in telegram_users.
-- SECURITY DEFINER so the mapping can be read whatever the caller may see.
CREATE OR REPLACE FUNCTION public.planbus_current_telegram_id() RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  claims jsonb := auth.jwt();
  claim text := claims ->> 'telegram_id';
  sub text := claims ->> 'sub';
BEGIN
  IF claim ~ '^-?[0-9]{1,18}$' THEN
    RETURN claim::bigint;
  END IF;
  IF sub ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    RETURN (SELECT telegram_id FROM public.telegram_users WHERE user_id = sub::uuid);
  END IF;
  RETURN NULL;
END
$$;

ALTER TABLE public.leads ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.plan_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.reminders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.telegram_users ENABLE ROW LEVEL SECURITY;

-- Supabase grants everything on new tables to anon and authenticated by default: take it back, then give
-- exactly what the policies below are for.
REVOKE ALL ON public.leads, public.plan_requests, public.reminders, public.telegram_users
  FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.leads, public.plan_requests, public.reminders, public.telegram_users TO authenticated;
-- Only these columns may be written by the Mini App; result, error, attempts and the internals may not.
GRANT INSERT (id, lead_id, telegram_id, status) ON public.plan_requests TO authenticated;
GRANT ALL ON public.leads, public.plan_requests, public.reminders, public.telegram_users TO service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;

DROP POLICY IF EXISTS leads_select_own ON public.leads;
CREATE POLICY leads_select_own ON public.leads
  FOR SELECT TO authenticated
  USING (telegram_id = (SELECT public.planbus_current_telegram_id()));

DROP POLICY IF EXISTS plan_requests_select_own ON public.plan_requests;
CREATE POLICY plan_requests_select_own ON public.plan_requests
  FOR SELECT TO authenticated
  USING (telegram_id = (SELECT public.planbus_current_telegram_id()));

DROP POLICY IF EXISTS plan_requests_insert_own ON public.plan_requests;
CREATE POLICY plan_requests_insert_own ON public.plan_requests
  FOR INSERT TO authenticated
  WITH CHECK (
    telegram_id = (SELECT public.planbus_current_telegram_id())
    AND status = 'pending'
    AND result IS NULL AND error IS NULL AND attempts = 0
    AND EXISTS (
      SELECT 1 FROM public.leads l
       WHERE l.id = lead_id AND l.telegram_id = (SELECT public.planbus_current_telegram_id()))
  );

DROP POLICY IF EXISTS reminders_select_own ON public.reminders;
CREATE POLICY reminders_select_own ON public.reminders
  FOR SELECT TO authenticated
  USING (telegram_id = (SELECT public.planbus_current_telegram_id()));

DROP POLICY IF EXISTS telegram_users_select_own ON public.telegram_users;
CREATE POLICY telegram_users_select_own ON public.telegram_users
  FOR SELECT TO authenticated
  USING (user_id = auth.uid());

-- planbus internals are for the functions only, including tables later migrations add there.
GRANT ALL ON ALL TABLES IN SCHEMA planbus_private TO service_role;
GRANT ALL ON ALL SEQUENCES IN SCHEMA planbus_private TO service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA planbus_private GRANT ALL ON TABLES TO service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA planbus_private GRANT ALL ON SEQUENCES TO service_role;

-- Functions are executable by PUBLIC by default (and Supabase adds anon and authenticated): every planbus
-- function is locked down to service_role, except the RLS helper above. Later migrations call this again.
CREATE OR REPLACE FUNCTION planbus_private.secure_functions() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  fn regprocedure;
BEGIN
  FOR fn IN
    SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE (n.nspname = 'public' AND p.proname LIKE 'planbus\_%' AND p.proname <> 'planbus_current_telegram_id')
        OR n.nspname = 'planbus_private'
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated', fn);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', fn);
  END LOOP;
  GRANT EXECUTE ON FUNCTION public.planbus_current_telegram_id() TO authenticated, service_role;
  REVOKE ALL ON FUNCTION public.planbus_current_telegram_id() FROM PUBLIC, anon;
END
$$;

SELECT planbus_private.secure_functions();
