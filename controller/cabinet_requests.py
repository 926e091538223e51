"""What callers hand the cabinet service and what they get back.

The web handlers (``web/cabinets.py``) and tests speak to the cabinet only in
these terms: a :class:`DepositRequest` in, a :class:`DepositReceipt` out, or a
:class:`CabinetRefused` that already carries the HTTP status and error code
the contract gives the refusal. They live apart from the service so that the
parts of the cabinet can refuse without importing the service that wires
them; ``controller.cabinet`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class CabinetRefused(Exception):
    """A cabinet request that cannot be done, with the HTTP status that says why."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class DepositRequest:
    recipient: str
    reference: str
    hold_hours: int
    compartment: int | None = None


@dataclass(frozen=True, slots=True)
class DepositReceipt:
    """The answer to a finished deposit; the only place the code ever appears."""

    deposit_id: int
    compartment: int
    label: str
    code: str = field(repr=False)
    expires: datetime
    reference: str
    recipient: str

    def to_json(self) -> dict[str, Any]:
        return {
            "deposit_id": self.deposit_id,
            "compartment": self.compartment,
            "label": self.label,
            "code": self.code,
            "expires": self.expires.isoformat(),
            "reference": self.reference,
            "recipient": self.recipient,
        }
