-- A stand-in for InsForge's realtime schema in a test database: the channels table as InsForge defines
-- it (pattern, webhook_urls, enabled), and realtime.publish recording what it was given in
-- realtime.published; InsForge's gateway would POST it to the channel's webhook URLs.
CREATE SCHEMA realtime;
CREATE TABLE realtime.channels (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  pattern      text UNIQUE NOT NULL,
  description  text,
  webhook_urls text[],
  enabled      boolean NOT NULL DEFAULT true,
  created_at   timestamptz DEFAULT now(),
  updated_at   timestamptz DEFAULT now()
);
CREATE TABLE realtime.published (channel text, event text, payload jsonb);
CREATE FUNCTION realtime.publish(channel_name text, event_name text, payload jsonb) RETURNS uuid
LANGUAGE sql AS $$
  INSERT INTO realtime.published VALUES (channel_name, event_name, payload);
  SELECT gen_random_uuid();
$$;
