-- Stand-ins for Supabase's pg_cron and pg_net in a test database (the embedded server has neither):
-- cron.schedule / cron.unschedule keep jobs in cron.job as pg_cron does (same name replaces), and
-- net.http_post records the request it was asked to send in net.requests instead of sending it.
CREATE SCHEMA cron;
CREATE TABLE cron.job (
  jobid    bigserial PRIMARY KEY,
  jobname  text UNIQUE,
  schedule text NOT NULL,
  command  text NOT NULL
);
CREATE FUNCTION cron.schedule(job_name text, schedule text, command text) RETURNS bigint
LANGUAGE sql AS $$
  INSERT INTO cron.job (jobname, schedule, command) VALUES (job_name, schedule, command)
  ON CONFLICT (jobname) DO UPDATE SET schedule = EXCLUDED.schedule, command = EXCLUDED.command
  RETURNING jobid
$$;
CREATE FUNCTION cron.unschedule(job_id bigint) RETURNS boolean
LANGUAGE sql AS $$ DELETE FROM cron.job WHERE jobid = job_id RETURNING true $$;

CREATE SCHEMA net;
CREATE TABLE net.requests (
  id                   bigserial PRIMARY KEY,
  url                  text,
  body                 jsonb,
  headers              jsonb,
  timeout_milliseconds int
);
CREATE FUNCTION net.http_post(
  url text, body jsonb DEFAULT '{}', params jsonb DEFAULT '{}', headers jsonb DEFAULT '{}',
  timeout_milliseconds int DEFAULT 5000
) RETURNS bigint
LANGUAGE sql AS $$
  INSERT INTO net.requests (url, body, headers, timeout_milliseconds)
  VALUES (url, body, headers, timeout_milliseconds) RETURNING id
$$;
