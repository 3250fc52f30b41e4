"""The chat platforms: each only translates its events into calls on ``bot.flow`` and back.

No credit or validation rule lives here; the flow, the credits and the messages are in ``bot``.
"""
