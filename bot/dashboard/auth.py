"""Who may use the dashboard, and how they log in: one-time links, session cookies, CSRF tokens.

``imagine-bot dashboard link`` asks ``new_login_link`` for a link valid once,
for 10 minutes, for an account in ``ADMIN_ACCOUNTS``. Opening it shows a
button; pressing it exchanges the link for a session (8 hours) whose token
travels in an HttpOnly, SameSite=Strict cookie, Secure when ``PUBLIC_URL`` is
https. Exchanging on a button press rather than on the link's GET keeps link
previews (chat unfurlers, mail scanners) from using the link up. The ledger
stores only the tokens' SHA-256. Each form carries a CSRF token derived from
the session's own token, so it needs no storage and dies with the session.
Whether an account is an admin is asked again on every request: an account
taken out of ``ADMIN_ACCOUNTS`` loses its sessions at the next restart.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot import messages
from bot.accounts import parse_account
from bot.errors import ImagineError, RequestError
from bot.settings import Settings
from ledger import Ledger

LINK_LIFETIME = timedelta(minutes=10)
SESSION_LIFETIME = timedelta(hours=8)
COOKIE = "imagine_dashboard"
COOKIE_PATH = "/admin"
LOGIN_PATH = "/admin/login"
_CSRF_PURPOSE = b"imagine-dashboard-csrf"
_ANY_ADDRESS = ("", "0.0.0.0", "::")


class NotDashboardAdmin(ImagineError):
    def __init__(self, account: str) -> None:
        super().__init__(messages.dashboard_not_admin(account))
        self.account = account


@dataclass(frozen=True)
class LoginLink:
    account: str
    url: str
    expires_at: datetime
    local: bool
    """True when PUBLIC_URL is unset and the link names this machine's web server instead."""


def base_url(settings: Settings) -> tuple[str, bool]:
    """Where the web server is reached, and whether that is only this machine's address
    (PUBLIC_URL unset: WEB_HOST, or localhost when it listens on every address)."""
    if settings.public_url:
        return settings.public_url.rstrip("/"), False
    host = "localhost" if settings.web_host in _ANY_ADDRESS else settings.web_host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}", True


async def new_login_link(ledger: Ledger, settings: Settings, account: str | None) -> LoginLink:
    """A one-time login link for ``account`` (by default the first of ``ADMIN_ACCOUNTS``),
    refused for an account that is not an admin or when there is none."""
    admins = settings.admin_accounts
    if not admins:
        raise RequestError(messages.DASHBOARD_NO_ADMINS)
    chosen = admins[0] if account is None else parse_account(account)
    if chosen not in admins:
        raise NotDashboardAdmin(chosen)
    token = await ledger.new_dashboard_link(chosen, LINK_LIFETIME)
    base, local = base_url(settings)
    return LoginLink(chosen, f"{base}{LOGIN_PATH}/{token}", ledger.now() + LINK_LIFETIME, local)


class DashboardAuth:
    """Logins and sessions as the web server checks them."""

    def __init__(self, ledger: Ledger, admins: frozenset[str], *, secure_cookie: bool) -> None:
        self.ledger = ledger
        self.admins = admins
        self.secure_cookie = secure_cookie

    @classmethod
    def from_settings(cls, ledger: Ledger, settings: Settings) -> DashboardAuth:
        public_url = settings.public_url or ""
        return cls(
            ledger,
            frozenset(settings.admin_accounts),
            secure_cookie=public_url.lower().startswith("https://"),
        )

    async def link_account(self, token: str) -> str | None:
        """The admin an unused, unexpired link is for; None for any other link."""
        found = await self.ledger.dashboard_link(token)
        return found.account if found is not None and found.account in self.admins else None

    async def log_in(self, token: str) -> str | None:
        """Use the link up for a session; the session's token, or None if it is refused."""
        if await self.link_account(token) is None:
            return None
        exchanged = await self.ledger.exchange_dashboard_link(token, SESSION_LIFETIME)
        return None if exchanged is None else exchanged[0]

    async def account(self, session: str | None) -> str | None:
        """The admin whose session this is; None without a session, or an ended one, or an
        account no longer in ADMIN_ACCOUNTS."""
        if not session:
            return None
        found = await self.ledger.dashboard_session(session)
        return found.account if found is not None and found.account in self.admins else None

    async def log_out(self, session: str) -> None:
        await self.ledger.end_dashboard_session(session)


def csrf_token(session: str) -> str:
    """The token every form of this session carries: only a page of the session can know it."""
    return hmac.new(session.encode(), _CSRF_PURPOSE, hashlib.sha256).hexdigest()


def csrf_matches(session: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(csrf_token(session), sent)
