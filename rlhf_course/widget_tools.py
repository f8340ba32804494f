"""What the notebook widgets share: running one button's action and turning its failure into a
message (`run_action`), used by `demo_widget`, `ranking_widget` and `chat`."""

from __future__ import annotations

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
