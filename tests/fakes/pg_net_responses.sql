-- A stand-in for Supabase's pg_net with its response table: net.http_post queues the request (as pg_net's
-- net.http_request_queue does) and returns its id; the test writes the answer pg_net's background worker
-- would have written into net._http_response, which has pg_net's columns.
CREATE SCHEMA net;
CREATE TABLE net.http_request_queue (
  id                   bigserial PRIMARY KEY,
  method               text NOT NULL DEFAULT 'POST',
  url                  text NOT NULL,
  headers              jsonb,
  body                 jsonb,
  timeout_milliseconds int
);
CREATE TABLE net._http_response (
  id           bigint,
  status_code  integer,
  content_type text,
  headers      jsonb,
  content      text,
  timed_out    boolean,
  error_msg    text,
  created      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON net._http_response (created);
CREATE FUNCTION net.http_post(
  url text, body jsonb DEFAULT '{}', params jsonb DEFAULT '{}', headers jsonb DEFAULT '{}',
  timeout_milliseconds int DEFAULT 5000
) RETURNS bigint
LANGUAGE sql AS $$
  INSERT INTO net.http_request_queue (url, headers, body, timeout_milliseconds)
  VALUES (url, headers, body, timeout_milliseconds) RETURNING id
$$;
