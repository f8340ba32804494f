"""What the notebook widgets share: running one button's action and turning its failure into a
message (`run_action`), used by `demo_widget`, `ranking_widget` and `chat`, and the status line
that shows it (`ActionStatus`)."""

from __future__ import annotations

import html
from collections.abc import Callable


def run_action(handler: Callable[[], str]) -> tuple[str | None, str | None]:
    """(message, error) of a widget action: a ValueError (ConversationError, ComparisonError) is
    an expected refusal shown as is; anything else (a failing model, a full disk) is shown with
    its type, so the notebook says what happened instead of dying."""
    try:
        return handler(), None
    except ValueError as e:
        return None, str(e)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


class ActionStatus:
    """Mixin for a widget with `status` (an HTML widget), `buttons`, `error` and a
    `_render(message, color)` that redraws it: `_act` runs one button's action."""

    def _show_busy(self, text: str) -> None:
        self.status.value = f'<span style="color:#555">{text}</span>'

    def _act(self, handler: Callable[[], str], busy: str | None = None) -> None:
        """Run a handler; show its message, or the error it raised, in the status line. With
        `busy`, show it and disable every button while the handler runs (sampling takes seconds)."""
        if busy:
            self._show_busy(busy)
            for b in self.buttons:
                b.disabled = True
        message, self.error = run_action(handler)
        if self.error is None:
            self._render(message, "#1e7d32")
        else:
            self._render(html.escape(self.error), "#c62828")
