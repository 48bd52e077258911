"""Cron schedules (`cron`), their firing and backfills (`firing`), and backfill plans (`backfill`)."""
