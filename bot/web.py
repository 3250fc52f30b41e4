"""The one public web server (``WEB_HOST:WEB_PORT``): ``/slack/events`` in Slack's HTTP mode,
``/stripe/webhook`` and Checkout's return pages, and the admin dashboard under ``/admin``.
Adapters add their routes before it starts; with no route it does not listen at all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot import messages
from bot.dashboard import DASHBOARD_PATH, Dashboard
from bot.flow import ImagineService
from bot.purchases import WEBHOOK_PATH, Purchases
from bot.settings import Settings

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LISTEN_BACKLOG = 1024
"""Pending connections the server queues: with aiohttp's default of 128 a burst of Slack
commands loses connects, and Slack's retry comes after its 3 s have passed."""
PAID_PATH = "/stripe/paid"
CANCELLED_PATH = "/stripe/cancelled"


class PublicWeb:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.application = web.Application()
        self.paths: list[str] = []

    def add_post(self, path: str, handler: Handler) -> None:
        self.application.router.add_post(path, handler)
        self.paths.append(path)

    def add_page(self, path: str, text: str) -> None:
        async def page(_request: web.Request) -> web.Response:
            return web.Response(text=text)

        self.application.router.add_get(path, page)

    def sell_through_stripe(self, purchases: Purchases) -> None:
        """Stripe's webhook, and the pages Checkout sends the buyer back to."""

        async def webhook(request: web.Request) -> web.Response:
            # The signature covers the body's exact bytes: read raw, never re-serialised.
            payload = await request.read()
            status = await purchases.stripe_webhook(
                payload, request.headers.get("Stripe-Signature")
            )
            return web.Response(status=status)

        self.add_post(WEBHOOK_PATH, webhook)
        self.add_page(PAID_PATH, messages.CHECKOUT_PAID_PAGE)
        self.add_page(CANCELLED_PATH, messages.CHECKOUT_CANCELLED_PAGE)

    def add_dashboard(self, service: ImagineService) -> None:
        """The admin dashboard, when there are admins to use it: without ADMIN_ACCOUNTS nobody
        could log in, and a bot that serves nothing else opens no port for it."""
        if not self.settings.admin_accounts:
            return
        Dashboard(service, self.settings).add_routes(self.application.router)
        self.paths.append(DASHBOARD_PATH)

    async def serve(self) -> None:
        """Listen until cancelled; return at once if nothing was routed here."""
        if not self.paths:
            return
        runner = web.AppRunner(self.application, access_log=None)
        await runner.setup()
        try:
            host, port = self.settings.web_host, self.settings.web_port
            await web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG).start()
            logger.info("Web server at http://%s:%d: %s", host, port, ", ".join(self.paths))
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
