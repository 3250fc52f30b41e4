"""The dashboard's HTTP side: routes under ``/admin`` on the one public web server.

Every page and form needs a session (``bot.dashboard.auth``) but the login
page itself and the static files (the stylesheet, the chart library and the
script that draws with it: code, no data). A form without its session's CSRF
token changes nothing. Each page's tables are also served as CSV
(``?csv=<table>``). Grants, revokes and prices go through ``Credits`` and
``PriceAdmin`` with the logged-in admin as the actor, as chat's admin commands do.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined
from multidict import MultiDictProxy

from bot import messages
from bot.accounts import parse_account
from bot.budgets import WARN_AT
from bot.dashboard.auth import (
    COOKIE,
    COOKIE_PATH,
    LOGIN_PATH,
    SESSION_LIFETIME,
    DashboardAuth,
    csrf_matches,
    csrf_token,
)
from bot.dashboard.pages import DEFAULT_PERIOD, PERIODS, DashboardPages, Page
from bot.errors import ImagineError, RequestError
from bot.flow import ImagineService
from bot.prices import PriceAdmin
from bot.settings import Settings

DASHBOARD_PATH = "/admin"
STATIC_PATH = "/admin/static"
_STATIC_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".md": "text/plain",
}
_SECURITY_HEADERS = {
    # Only the dashboard's own files run or style a page; nothing may frame it.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    # A login link's token is in the address: no other site may see it in a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_SPREADSHEET_FORMULA = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Visit:
    """A request from a logged-in admin: who, their session, and the form they sent."""

    admin: str
    session: str
    form: MultiDictProxy[str | bytes | web.FileField] | None = None

    def field(self, name: str) -> str:
        value = None if self.form is None else self.form.get(name)
        return value.strip() if isinstance(value, str) else ""


AdminHandler = Callable[[web.Request, Visit], Awaitable[web.StreamResponse]]


class Dashboard:
    def __init__(self, service: ImagineService, settings: Settings) -> None:
        self.service = service
        self.pages = DashboardPages(service, settings)
        self.auth = DashboardAuth.from_settings(service.ledger, settings)
        self.prices = PriceAdmin(service.credits, service.catalog.registry)
        self.templates = Environment(
            loader=PackageLoader("bot.dashboard", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
        )
        # Every sentence a page says is in bot.messages, as everywhere else.
        self.templates.globals.update(
            account_url=account_url, form_key=_form_key, messages=messages
        )
        self.static = {
            item.name: item.read_bytes()
            for item in resources.files("bot.dashboard").joinpath("static").iterdir()
            if item.is_file() and any(item.name.endswith(ext) for ext in _STATIC_TYPES)
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(DASHBOARD_PATH, self._admin(self.overview))
        router.add_get(f"{DASHBOARD_PATH}/", self._admin(self.overview))
        router.add_get(f"{DASHBOARD_PATH}/models", self._admin(self.models))
        router.add_get(f"{DASHBOARD_PATH}/users", self._admin(self.users))
        router.add_get(f"{DASHBOARD_PATH}/users/{{account}}", self._admin(self.account))
        for action in ("grant", "revoke", "price", "price-clear"):
            router.add_post(
                f"{DASHBOARD_PATH}/users/{{account}}/{action}", self._admin(self.change)
            )
        router.add_get(f"{DASHBOARD_PATH}/purchases", self._admin(self.purchases))
        router.add_get(f"{DASHBOARD_PATH}/live", self._admin(self.live))
        router.add_post(f"{DASHBOARD_PATH}/logout", self._admin(self.log_out))
        router.add_get(f"{LOGIN_PATH}/{{token}}", self.login_page)
        router.add_post(LOGIN_PATH, self.log_in)
        router.add_get(f"{STATIC_PATH}/{{name}}", self.static_file)

    # -- sessions -------------------------------------------------------------------

    def _admin(
        self, handler: AdminHandler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` for logged-in admins only; a form must carry its session's CSRF token."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            session = request.cookies.get(COOKIE)
            admin = await self.auth.account(session)
            if admin is None or session is None:
                return self._message(401, "Log in", messages.DASHBOARD_LOG_IN_FIRST)
            visit = Visit(admin, session)
            if request.method == "POST":
                visit = Visit(admin, session, await request.post())
                if not csrf_matches(session, visit.field("csrf")):
                    return self._message(403, "Refused", messages.DASHBOARD_FORM_REFUSED, visit)
            return await handler(request, visit)

        return guarded

    async def login_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        account = await self.auth.link_account(token)
        if account is None:
            return self._message(403, "Log in", messages.DASHBOARD_LINK_UNUSABLE)
        return self._render(
            "login.html",
            title="Log in",
            sentence=messages.dashboard_log_in_as(account),
            token=token,
        )

    async def log_in(self, request: web.Request) -> web.Response:
        token = (await request.post()).get("token")
        session = await self.auth.log_in(token) if isinstance(token, str) else None
        if session is None:
            return self._message(403, "Log in", messages.DASHBOARD_LINK_UNUSABLE)
        response = web.Response(status=303, headers={"Location": DASHBOARD_PATH})
        response.set_cookie(
            COOKIE,
            session,
            max_age=int(SESSION_LIFETIME.total_seconds()),
            path=COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=self.auth.secure_cookie,
        )
        response.headers.update(_SECURITY_HEADERS)
        return response

    async def log_out(self, _request: web.Request, visit: Visit) -> web.Response:
        await self.auth.log_out(visit.session)
        response = self._message(200, "Logged out", messages.DASHBOARD_LOGGED_OUT)
        response.del_cookie(COOKIE, path=COOKIE_PATH)
        return response

    # -- pages ----------------------------------------------------------------------

    async def overview(self, request: web.Request, visit: Visit) -> web.Response:
        return await self._page(request, visit, await self.pages.overview(), nav="overview")

    async def models(self, request: web.Request, visit: Visit) -> web.Response:
        page = await self.pages.models(_period(request))
        return await self._page(request, visit, page, nav="models")

    async def users(self, request: web.Request, visit: Visit) -> web.Response:
        search = request.query.get("q", "").strip()
        page = await self.pages.users(search)
        return await self._page(
            request, visit, page, nav="users", search_account=_account_or_none(search)
        )

    async def account(self, request: web.Request, visit: Visit) -> web.Response:
        try:
            account = parse_account(request.match_info["account"])
        except RequestError as refusal:
            return self._message(404, "No such account", refusal.message, visit)
        return await self._page(request, visit, await self.pages.account(account), nav="users")

    async def purchases(self, request: web.Request, visit: Visit) -> web.Response:
        page = await self.pages.purchases(_period(request))
        return await self._page(request, visit, page, nav="purchases")

    async def live(self, request: web.Request, visit: Visit) -> web.Response:
        return await self._page(request, visit, await self.pages.live(), nav="live")

    # -- forms ----------------------------------------------------------------------

    async def change(self, request: web.Request, visit: Visit) -> web.Response:
        """A grant, revoke, price or price-clear form for one account, then its page again
        with the one sentence saying what happened (400 if it was refused)."""
        try:
            account = parse_account(request.match_info["account"])
        except RequestError as refusal:
            return self._message(404, "No such account", refusal.message, visit)
        action = request.path.rsplit("/", 1)[1]
        status = 200
        try:
            said = await self._change(action, account, visit)
        except ImagineError as refusal:
            said, status = refusal.message, 400
        page = await self.pages.account(account)
        return await self._page(
            request, visit, page, status=status, said=said, nav="users", path=account_url(account)
        )

    async def _change(self, action: str, account: str, visit: Visit) -> str:
        credits = self.service.credits
        if action in ("grant", "revoke"):
            # The form's own key: sent twice (a double click, a reload), it changes the balance once.
            key = f"dashboard:{visit.field('key') or secrets.token_urlsafe(12)}"
            if await credits.ledger.key_used(key):
                balance = await credits.ledger.balance(account)
                return messages.dashboard_form_sent_twice(account, balance.available)
            return await credits.adjust(
                action,
                visit.admin,
                account,
                visit.field("amount"),
                visit.field("reason"),
                expires=(visit.field("expires") or None) if action == "grant" else None,
                idempotency_key=key,
            )
        if action == "price":
            return await self.prices.set_price(
                visit.admin,
                account,
                model=visit.field("model") or None,
                credits_per_image=visit.field("credits") or None,
                percent_off=visit.field("percent_off") or None,
                until=visit.field("until") or None,
                reason=visit.field("reason"),
            )
        return await self.prices.clear_prices(visit.admin, account, visit.field("model") or None)

    # -- responses ------------------------------------------------------------------

    async def _page(
        self,
        request: web.Request,
        visit: Visit,
        page: Page,
        *,
        status: int = 200,
        path: str | None = None,
        **context: object,
    ) -> web.Response:
        """The page as HTML, or one of its tables as CSV when ``?csv=<table>`` asks."""
        wanted = request.query.get("csv")
        if wanted is not None:
            table = page.table(wanted)
            if table is None:
                return self._message(404, "No such table", messages.DASHBOARD_NO_SUCH_PAGE, visit)
            response = web.Response(
                text=_csv(table.rows),
                content_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{table.name}.csv"'},
            )
            response.headers.update(_SECURITY_HEADERS)
            return response
        here = request.rel_url if path is None else request.rel_url.with_path(path)

        def csv_href(name: str) -> str:
            return str(here.update_query(csv=name))

        return self._render(
            page.template,
            status=status,
            visit=visit,
            title=page.title,
            page=page,
            csv_href=csv_href,
            said=context.pop("said", None),
            alerts=[
                messages.budget_warning(use.provider, use.committed_usd, use.budget_usd)
                for use in await self.service.budgets.uses()
                if use.share >= WARN_AT
            ],
            **context,
        )

    def _message(
        self, status: int, title: str, sentence: str, visit: Visit | None = None
    ) -> web.Response:
        return self._render(
            "message.html", status=status, visit=visit, title=title, sentence=sentence
        )

    def _render(
        self, template: str, *, status: int = 200, visit: Visit | None = None, **context: object
    ) -> web.Response:
        context.setdefault("nav", "")
        context.setdefault("said", None)
        context.setdefault("alerts", [])
        html = self.templates.get_template(template).render(
            admin=None if visit is None else visit.admin,
            csrf="" if visit is None else csrf_token(visit.session),
            **context,
        )
        response = web.Response(text=html, status=status, content_type="text/html")
        response.headers.update(_SECURITY_HEADERS)
        return response

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self.static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        kind = next(kind for ext, kind in _STATIC_TYPES.items() if name.endswith(ext))
        response = web.Response(body=body, content_type=kind)
        response.headers.update(_SECURITY_HEADERS)
        # Code, not data: the same for everyone, and changed only by a new release.
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response


def account_url(account: str) -> str:
    return f"{DASHBOARD_PATH}/users/{quote(account, safe=':')}"


def _form_key() -> str:
    return secrets.token_urlsafe(12)


def _period(request: web.Request) -> str:
    period = request.query.get("days", DEFAULT_PERIOD)
    return period if period in PERIODS else DEFAULT_PERIOD


def _account_or_none(text: str) -> str | None:
    try:
        return parse_account(text) if text else None
    except RequestError:
        return None


def _csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def _cell(value: object) -> object:
    """A value as a spreadsheet should read it: text that would start a formula is quoted."""
    if isinstance(value, str) and value.startswith(_SPREADSHEET_FORMULA):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value
