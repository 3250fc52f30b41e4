"""Sizes the chat platforms refuse to go past, in one place.

Discord refuses a whole command sync when one choice is too long, leaving the
server with no commands at all, so the registry checks its text against these
at load instead of the adapter cutting it short where the price would be lost.
"""

from __future__ import annotations

DISCORD_CHOICE_CHARACTERS = 100
"""The most characters in an application command choice's name, and in its value."""
DISCORD_CHOICES = 25
"""The most choices one option (or one autocomplete answer) may offer."""
DISCORD_MESSAGE_CHARACTERS = 2000
BUTTON_CHARACTERS = 75
"""The most characters in a button's label on every platform: Slack's 75 (Discord takes 80)."""
