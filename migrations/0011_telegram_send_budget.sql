-- Telegram's rate limits as one budget shared by every sender: about 30 messages a second per bot and one
-- a second per chat. Each send_due_reminders call, in whatever process or instance, takes a slot here
-- before each message, so overlapping calls add up to the limits instead of each keeping them on its own.
--
-- A slot is a moment. The bot has a next free moment for any message (slots 1/p_per_second apart, evenly
-- spaced, as Telegram counts them), and each chat one of its own (p_chat_interval_seconds apart). Taking a
-- slot reserves the latest of now, the bot's and the chat's next moments, and moves both on past it; the
-- caller waits until that moment and sends. The bot's row is locked for the take, so takers of one bot go
-- one at a time and every reservation sees the one before it. Moments come from the database's clock
-- (clock_timestamp(), read once the lock is held), the one clock every instance shares.
-- A delivered message moves its chat's next moment on from when it was delivered, in case it went out
-- late; a 429 from Telegram pushes the bot's next moment past its retry_after, for every sender at once.
--
-- Rows: one per bot, one per chat a bot has written to (at most one per Telegram user); a row only holds
-- a moment, so an old one is simply in the past.

CREATE TABLE IF NOT EXISTS planbus_private.telegram_send_budget (
  bot          text PRIMARY KEY,
  next_slot_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS planbus_private.telegram_chat_slots (
  bot          text NOT NULL,
  chat_id      bigint NOT NULL,
  next_slot_at timestamptz NOT NULL,
  PRIMARY KEY (bot, chat_id)
);

GRANT ALL ON planbus_private.telegram_send_budget, planbus_private.telegram_chat_slots TO service_role;

-- Reserve the next send slot for p_bot's message to p_chat_id, if it comes within p_within_seconds;
-- otherwise take nothing (the caller's time budget would run out first).
-- Returns {granted: true, slot_at, wait_seconds} (send after waiting that long) or {granted: false,
-- slot_at, wait_seconds} (how far away the slot was).
CREATE OR REPLACE FUNCTION public.planbus_take_telegram_slot(
  p_bot text,
  p_chat_id bigint,
  p_within_seconds double precision,
  p_per_second double precision,
  p_chat_interval_seconds double precision
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  bot_next timestamptz;
  chat_next timestamptz;
  now_at timestamptz;
  slot timestamptz;
BEGIN
  PERFORM planbus_private.require(length(btrim(p_bot)) > 0, 'p_bot must name the bot');
  PERFORM planbus_private.require(p_chat_id IS NOT NULL, 'p_chat_id is required');
  -- `< 'Infinity'` also refuses NaN, which PostgreSQL orders above every number.
  PERFORM planbus_private.require(p_within_seconds >= 0 AND p_within_seconds < 'Infinity',
                                  'p_within_seconds must be a number of seconds, not negative');
  PERFORM planbus_private.require(p_per_second > 0 AND p_per_second < 'Infinity',
                                  'p_per_second must be a positive rate');
  PERFORM planbus_private.require(p_chat_interval_seconds >= 0 AND p_chat_interval_seconds < 'Infinity',
                                  'p_chat_interval_seconds must be a number of seconds, not negative');

  INSERT INTO planbus_private.telegram_send_budget (bot, next_slot_at) VALUES (p_bot, '-infinity')
  ON CONFLICT (bot) DO NOTHING;
  SELECT next_slot_at INTO bot_next FROM planbus_private.telegram_send_budget WHERE bot = p_bot FOR UPDATE;
  -- Held to commit: the chat's row below needs no lock order of its own.
  SELECT next_slot_at INTO chat_next
    FROM planbus_private.telegram_chat_slots WHERE bot = p_bot AND chat_id = p_chat_id;
  now_at := clock_timestamp();
  slot := greatest(now_at, bot_next, coalesce(chat_next, now_at));
  IF slot > now_at + make_interval(secs => p_within_seconds) THEN
    RETURN jsonb_build_object('granted', false, 'slot_at', slot, 'wait_seconds', extract(epoch FROM slot - now_at));
  END IF;

  UPDATE planbus_private.telegram_send_budget
     SET next_slot_at = slot + make_interval(secs => 1 / p_per_second)
   WHERE bot = p_bot;
  INSERT INTO planbus_private.telegram_chat_slots (bot, chat_id, next_slot_at)
  VALUES (p_bot, p_chat_id, slot + make_interval(secs => p_chat_interval_seconds))
  ON CONFLICT (bot, chat_id) DO UPDATE SET next_slot_at = excluded.next_slot_at;
  RETURN jsonb_build_object('granted', true, 'slot_at', slot, 'wait_seconds', extract(epoch FROM slot - now_at));
END
$$;

-- A message of p_bot was delivered to p_chat_id just now: the chat's next message waits
-- p_chat_interval_seconds from here, not from the reserved slot, since the send may have gone out later
-- than reserved (a slow network, a stalled sender). The claim never puts two reminders of one chat in
-- flight at once, so the next one is reserved only after this has run.
-- Returns {next_slot_at}.
CREATE OR REPLACE FUNCTION public.planbus_telegram_delivered(
  p_bot text, p_chat_id bigint, p_chat_interval_seconds double precision
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  next_at timestamptz;
BEGIN
  PERFORM planbus_private.require(length(btrim(p_bot)) > 0, 'p_bot must name the bot');
  PERFORM planbus_private.require(p_chat_id IS NOT NULL, 'p_chat_id is required');
  PERFORM planbus_private.require(p_chat_interval_seconds >= 0 AND p_chat_interval_seconds < 'Infinity',
                                  'p_chat_interval_seconds must be a number of seconds, not negative');
  INSERT INTO planbus_private.telegram_chat_slots AS c (bot, chat_id, next_slot_at)
  VALUES (p_bot, p_chat_id, clock_timestamp() + make_interval(secs => p_chat_interval_seconds))
  ON CONFLICT (bot, chat_id) DO UPDATE SET next_slot_at = greatest(c.next_slot_at, excluded.next_slot_at)
  RETURNING next_slot_at INTO next_at;
  RETURN jsonb_build_object('next_slot_at', next_at);
END
$$;

-- Telegram answered 429 with retry_after p_seconds: no message of p_bot goes out before then, from any
-- sender (a slot already reserved for an earlier moment is the sender's to give back).
-- Returns {resume_at}.
CREATE OR REPLACE FUNCTION public.planbus_pause_telegram(p_bot text, p_seconds double precision)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  resume timestamptz;
BEGIN
  PERFORM planbus_private.require(length(btrim(p_bot)) > 0, 'p_bot must name the bot');
  PERFORM planbus_private.require(p_seconds >= 0 AND p_seconds < 'Infinity',
                                  'p_seconds must be a number of seconds, not negative');
  INSERT INTO planbus_private.telegram_send_budget AS b (bot, next_slot_at)
  VALUES (p_bot, clock_timestamp() + make_interval(secs => p_seconds))
  ON CONFLICT (bot) DO UPDATE SET next_slot_at = greatest(b.next_slot_at, excluded.next_slot_at)
  RETURNING next_slot_at INTO resume;
  RETURN jsonb_build_object('resume_at', resume);
END
$$;

SELECT planbus_private.secure_functions();
