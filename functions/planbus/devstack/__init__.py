"""The local stack behind `planbus dev` and `planbus demo`: the cloud's moving parts, run on one machine.

    PostgreSQL (embedded or DATABASE_URL)
      │  AFTER INSERT trigger → pg_notify('planbus_events')
      ▼
    relay.WebhookRelay ──POST + X-Webhook-Secret──▶ functions-framework: handle_plan_request
    scheduler.Scheduler ─POST on a timer──────────▶ functions-framework: send_due_reminders,
                                                                          reset_stale_requests
    sink.TelegramSink ◀── pg_notify('planbus_outbox') ◀── reminders delivered to the outbox

Each function runs as its own functions-framework server process under `supervisor.ManagedProcess`
(restarted when it dies); relay, scheduler and sink are threads of the orchestrating process
(`stack.Stack`). `demo` drives the stack the way the Mini App and an operator would.
"""
