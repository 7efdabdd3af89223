-- Telegram's global limit as a window of sends, not a row of moments.
--
-- Telegram counts a bot's messages in any one second as they arrive. 0011 handed out moments 1/rate
-- apart, and each sender slept until its moment: a sender that woke or sent late (a busy machine, a
-- thread waiting for the GIL) arrived together with the ones after it, so evenly spaced moments could
-- still put more than the limit into one second, and no spacing wide enough for every stall is cheap.
--
-- Here a send counts against the bot from the moment it is taken (before the request leaves) until one
-- window after the sender reports it done (after the answer came back): its arrival at Telegram lies
-- between the two, so every message Telegram counts in one second is among those counting here at the end
-- of that second. A send is taken only while fewer than p_per_window count, so Telegram never sees more,
-- however late a request goes out. A sender that dies before reporting stops counting p_hold_seconds
-- (its timeout and more) after it took the send.
--
-- The chat's next moment (telegram_chat_slots, 0011) already counts from the reported delivery, and a
-- 429's pause is the bot's next_slot_at in telegram_send_budget (planbus_pause_telegram, 0011): both hold
-- as before. A take is one statement under the bot's row lock, so takers of one bot go one at a time.

CREATE TABLE IF NOT EXISTS planbus_private.telegram_sends (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  bot          text NOT NULL,
  chat_id      bigint NOT NULL,
  taken_at     timestamptz NOT NULL,
  done_at      timestamptz,
  -- Until when it counts against the bot: taken_at + hold while in flight, done_at + window once done.
  counts_until timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS telegram_sends_counting ON planbus_private.telegram_sends (bot, counts_until);

GRANT ALL ON planbus_private.telegram_sends TO service_role;

DROP FUNCTION IF EXISTS public.planbus_take_telegram_slot(text, bigint, double precision, double precision,
                                                          double precision);
DROP FUNCTION IF EXISTS public.planbus_telegram_delivered(text, bigint, double precision);

-- Take a send for p_bot's message to p_chat_id now, if the bot's window, its pause and the chat allow it.
-- Returns {granted: true, send_id} (send, then report it with planbus_telegram_send_done) or
-- {granted: false, wait_seconds, window_full}: nothing taken; no send can be granted sooner than that
-- (another taker may still come first); window_full: the bot's window is what it waits for, not only its
-- chat or a pause.
CREATE OR REPLACE FUNCTION public.planbus_take_telegram_send(
  p_bot text,
  p_chat_id bigint,
  p_per_window int,
  p_window_seconds double precision,
  p_hold_seconds double precision
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  paused_until timestamptz;
  chat_next timestamptz;
  now_at timestamptz;
  counting int;
  window_frees timestamptz;
  ready_at timestamptz;
  send_id bigint;
BEGIN
  PERFORM planbus_private.require(length(btrim(p_bot)) > 0, 'p_bot must name the bot');
  PERFORM planbus_private.require(p_chat_id IS NOT NULL, 'p_chat_id is required');
  PERFORM planbus_private.require(p_per_window > 0, 'p_per_window must be a positive number of messages');
  -- `< 'Infinity'` also refuses NaN, which PostgreSQL orders above every number.
  PERFORM planbus_private.require(p_window_seconds > 0 AND p_window_seconds < 'Infinity',
                                  'p_window_seconds must be a positive number of seconds');
  PERFORM planbus_private.require(p_hold_seconds > 0 AND p_hold_seconds < 'Infinity',
                                  'p_hold_seconds must be a positive number of seconds');

  INSERT INTO planbus_private.telegram_send_budget (bot, next_slot_at) VALUES (p_bot, '-infinity')
  ON CONFLICT (bot) DO NOTHING;
  SELECT next_slot_at INTO paused_until FROM planbus_private.telegram_send_budget WHERE bot = p_bot FOR UPDATE;
  now_at := clock_timestamp();
  DELETE FROM planbus_private.telegram_sends WHERE bot = p_bot AND counts_until <= now_at;
  SELECT next_slot_at INTO chat_next
    FROM planbus_private.telegram_chat_slots WHERE bot = p_bot AND chat_id = p_chat_id;
  SELECT count(*) INTO counting FROM planbus_private.telegram_sends WHERE bot = p_bot;
  IF counting >= p_per_window THEN
    -- The window frees when the send that stops counting first does. One still in flight stops counting
    -- a whole window after it is reported done, so it frees nothing sooner than that.
    SELECT least(min(counts_until) FILTER (WHERE done_at IS NOT NULL),
                 now_at + make_interval(secs => p_window_seconds))
      INTO window_frees FROM planbus_private.telegram_sends WHERE bot = p_bot;
  END IF;
  ready_at := greatest(paused_until, chat_next, window_frees);
  IF ready_at > now_at THEN
    RETURN jsonb_build_object('granted', false, 'wait_seconds', extract(epoch FROM ready_at - now_at),
                              'window_full', window_frees IS NOT NULL);
  END IF;

  INSERT INTO planbus_private.telegram_sends (bot, chat_id, taken_at, counts_until)
  VALUES (p_bot, p_chat_id, now_at, now_at + make_interval(secs => p_hold_seconds))
  RETURNING id INTO send_id;
  RETURN jsonb_build_object('granted', true, 'send_id', send_id);
END
$$;

-- The send p_send_id is over (delivered, refused or failed: the message may have arrived either way):
-- it counts one window more, and its chat's next message waits p_chat_interval_seconds from now, however
-- late this one went out. The claim never puts two reminders of one chat in flight at once, so the chat's
-- next send is taken only after this has run. A send already reported, or long forgotten, is left alone.
-- Returns {recorded, next_chat_slot_at}.
CREATE OR REPLACE FUNCTION public.planbus_telegram_send_done(
  p_send_id bigint, p_window_seconds double precision, p_chat_interval_seconds double precision
) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  now_at timestamptz := clock_timestamp();
  sent planbus_private.telegram_sends;
  next_at timestamptz;
BEGIN
  PERFORM planbus_private.require(p_send_id IS NOT NULL, 'p_send_id is required');
  PERFORM planbus_private.require(p_window_seconds > 0 AND p_window_seconds < 'Infinity',
                                  'p_window_seconds must be a positive number of seconds');
  PERFORM planbus_private.require(p_chat_interval_seconds >= 0 AND p_chat_interval_seconds < 'Infinity',
                                  'p_chat_interval_seconds must be a number of seconds, not negative');
  UPDATE planbus_private.telegram_sends
     SET done_at = now_at, counts_until = now_at + make_interval(secs => p_window_seconds)
   WHERE id = p_send_id AND done_at IS NULL
  RETURNING * INTO sent;
  IF NOT FOUND THEN
    RETURN jsonb_build_object('recorded', false, 'next_chat_slot_at', NULL);
  END IF;
  INSERT INTO planbus_private.telegram_chat_slots AS c (bot, chat_id, next_slot_at)
  VALUES (sent.bot, sent.chat_id, now_at + make_interval(secs => p_chat_interval_seconds))
  ON CONFLICT (bot, chat_id) DO UPDATE SET next_slot_at = greatest(c.next_slot_at, excluded.next_slot_at)
  RETURNING next_slot_at INTO next_at;
  RETURN jsonb_build_object('recorded', true, 'next_chat_slot_at', next_at);
END
$$;

SELECT planbus_private.secure_functions();
