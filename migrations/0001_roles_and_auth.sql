-- Roles and auth helpers that Supabase and InsForge provide, created on plain PostgreSQL only where missing.
-- Existing roles and functions (Supabase's own) are left exactly as they are.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    CREATE ROLE anon NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN NOINHERIT;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
  END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS auth;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

-- auth.jwt(): the request's JWT claims as PostgREST sets them (request.jwt.claims), or '{}'.
-- auth.uid(): the `sub` claim. A GUC once set in a session reads back as '' (not NULL) after its
-- transaction, so every level is passed through nullif before falling back, as Supabase's own does.
DO $$
BEGIN
  IF to_regprocedure('auth.jwt()') IS NULL THEN
    EXECUTE $fn$
      CREATE FUNCTION auth.jwt() RETURNS jsonb
      LANGUAGE sql STABLE
      AS $body$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), ''),
          '{}'
        )::jsonb
      $body$
    $fn$;
    GRANT EXECUTE ON FUNCTION auth.jwt() TO anon, authenticated, service_role;
  END IF;
  IF to_regprocedure('auth.uid()') IS NULL THEN
    EXECUTE $fn$
      CREATE FUNCTION auth.uid() RETURNS uuid
      LANGUAGE sql STABLE
      AS $body$
        SELECT nullif(
          coalesce(
            nullif(current_setting('request.jwt.claim.sub', true), ''),
            nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
          ),
          ''
        )::uuid
      $body$
    $fn$;
    GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
  END IF;
END
$$;

-- planbus internals: never readable by anon or authenticated.
CREATE SCHEMA IF NOT EXISTS planbus_private;
REVOKE ALL ON SCHEMA planbus_private FROM PUBLIC;
GRANT USAGE ON SCHEMA planbus_private TO service_role;
