"""The admin dashboard at ``/admin`` on the bot's web server: figures, accounts, purchases and
what runs now, for the accounts in ``ADMIN_ACCOUNTS`` (docs/dashboard.md)."""

from bot.dashboard.auth import LoginLink, new_login_link
from bot.dashboard.routes import DASHBOARD_PATH, Dashboard

__all__ = ["DASHBOARD_PATH", "Dashboard", "LoginLink", "new_login_link"]
