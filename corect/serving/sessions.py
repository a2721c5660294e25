"""The open conversations of the live service: one recognizer state each, a bound on
how many are open, and the idle ones closed.

A conversation opens on its first WebSocket connection or POSTed utterance and lives
until ``DELETE /v1/conversations/{id}``, or until it has been idle (no utterance)
for ``idle_timeout_s``: :meth:`Conversations.sweep` (run by the app every
:meth:`Conversations.sweep_interval` seconds) closes it, closes its WebSockets and drops
its state, so its memory is freed. A WebSocket that disconnects leaves its conversation
open (a client may reconnect to the same id and go on).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from corect.inference.recognizer import DialogueState, StreamingRecognizer
from corect.serving.messages import MessageError

ID_PATTERN = re.compile(r"[A-Za-z0-9._~:-]{1,128}")

# Closes one WebSocket with a close code and reason.
Closer = Callable[[int, str], Awaitable[None]]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


class CapacityError(MessageError):
    """The service holds its maximum of open conversations (HTTP 503, WebSocket 1013)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, field="id", status=503)
        self.reason = reason  # short, for a WebSocket close frame


def check_id(conversation_id: str) -> str:
    """A conversation id: 1 to 128 letters, digits or ``. _ ~ : -``."""
    if not ID_PATTERN.fullmatch(conversation_id):
        raise MessageError(
            f"conversation id {conversation_id[:40]!r}: use 1 to 128 letters, digits or . _ ~ : -",
            field="id",
        )
    return conversation_id


@dataclass(eq=False)
class Conversation:
    """One open conversation: its recognizer state, a lock that keeps one utterance of
    it in flight at a time (so replies come in order), and its open WebSockets."""

    id: str
    state: DialogueState
    last_active: float = field(default_factory=time.monotonic)
    busy: int = 0
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sockets: dict[int, Closer] = field(default_factory=dict)

    @property
    def utterances(self) -> int:
        return self.state.position

    def touch(self) -> None:
        self.last_active = time.monotonic()


class Conversations:
    """The open conversations by id, at most `max_conversations` of them; those idle for
    more than `idle_timeout_s` are closed by :meth:`sweep`."""

    def __init__(
        self, recognizer: StreamingRecognizer, max_conversations: int, idle_timeout_s: float
    ) -> None:
        self.recognizer = recognizer
        self.max_conversations = max_conversations
        self.idle_timeout_s = idle_timeout_s
        self.open: dict[str, Conversation] = {}
        self.closed_idle = 0  # conversations closed by the sweeper so far

    def __len__(self) -> int:
        return len(self.open)

    def get(self, conversation_id: str) -> Conversation | None:
        return self.open.get(conversation_id)

    def get_or_open(self, conversation_id: str) -> Conversation:
        """The conversation `conversation_id`, opened if new (:class:`CapacityError` when
        the service is full)."""
        conversation = self.open.get(check_id(conversation_id))
        if conversation is not None:
            return conversation
        if len(self.open) >= self.max_conversations:
            raise CapacityError(
                f"the service holds its maximum of {self.max_conversations} open "
                "conversations (--max-conversations); close one (DELETE "
                "/v1/conversations/{id}) or retry later",
                f"service full: {self.max_conversations} open conversations; retry later",
            )
        conversation = Conversation(conversation_id, self.recognizer.new_state())
        self.open[conversation_id] = conversation
        return conversation

    async def close(
        self, conversation_id: str, code: int = CLOSE_NORMAL, reason: str = "conversation closed"
    ) -> bool:
        """Close a conversation and its WebSockets, dropping its state; False if it was
        not open."""
        conversation = self.open.pop(conversation_id, None)
        if conversation is None:
            return False
        conversation.closed = True
        for closer in list(conversation.sockets.values()):
            try:
                await closer(code, reason)
            except Exception:  # noqa: BLE001 - a socket already gone closes nothing
                pass
        conversation.sockets.clear()
        return True

    async def close_all(self, reason: str = "the service is stopping") -> None:
        for conversation_id in list(self.open):
            await self.close(conversation_id, CLOSE_GOING_AWAY, reason)

    async def sweep(self, now: float | None = None) -> list[str]:
        """Close the conversations idle for more than `idle_timeout_s` (none with an
        utterance in flight); their ids."""
        now = time.monotonic() if now is None else now
        idle = [
            c.id
            for c in self.open.values()
            if not c.busy and now - c.last_active > self.idle_timeout_s
        ]
        reason = f"idle for more than {self.idle_timeout_s:g} s: conversation closed"
        for conversation_id in idle:
            await self.close(conversation_id, CLOSE_NORMAL, reason)
        self.closed_idle += len(idle)
        return idle

    def sweep_interval(self) -> float:
        """How often to sweep: a quarter of the idle timeout, between 0.05 and 5 s."""
        return min(5.0, max(0.05, self.idle_timeout_s / 4))
