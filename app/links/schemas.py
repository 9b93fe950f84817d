"""Request and response shapes of the public link endpoints."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.settings import OPT_IN_CODE
from app.webhooks.parse import REF_PARAM, UTM_FIELDS

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL characters
Attribution = Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]
ParamKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
]
ParamValue = Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]

RESERVED_PARAMS = {"body", "sender_type", REF_PARAM, "click_id", *UTM_FIELDS}


class OptInLinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: (
        Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)] | None
    ) = Field(
        default=None,
        description="Text prefilled in the visitor's Messages app; must contain [opt-in-code]. "
        "Defaults to LOOP_OPTIN_BODY.",
    )
    click_id: Attribution | None = None
    utm_source: Attribution | None = None
    utm_medium: Attribution | None = None
    utm_campaign: Attribution | None = None
    utm_term: Attribution | None = None
    utm_content: Attribution | None = None
    page_url: Annotated[str, StringConstraints(max_length=2000, pattern=NO_NUL)] | None = Field(
        default=None, description="The page the visitor saw (consent evidence)."
    )
    params: dict[ParamKey, ParamValue] = Field(
        default_factory=dict,
        max_length=20,
        description="Extra fields forwarded to LoopMessage and returned in the webhook "
        "(e.g. `list` to pick a Call Loop route, `first`, `last`, `email`).",
    )

    @field_validator("body")
    @classmethod
    def _has_code(cls, body: str | None) -> str | None:
        if body is not None and OPT_IN_CODE not in body:
            raise ValueError(f"body must contain the literal {OPT_IN_CODE}")
        return body

    @field_validator("params")
    @classmethod
    def _not_reserved(cls, params: dict[str, str]) -> dict[str, str]:
        clash = sorted(set(params) & RESERVED_PARAMS)
        if clash:
            raise ValueError(f"params may not use the reserved names {clash}")
        return params

    def attribution(self) -> dict[str, str]:
        fields = {"click_id": self.click_id}
        fields.update({name: getattr(self, name) for name in UTM_FIELDS})
        return {name: value for name, value in fields.items() if value}


class OptInLinks(BaseModel):
    id: str = Field(description="LoopMessage's id for this link")
    ref: str = Field(description="This service's reference for the link request")
    imessage: str | None = Field(description="imessage:// link, for iOS 13 and later")
    sms: str | None = Field(description="sms: link, for older iOS, Android and desktop")
    url: str | None = Field(description="Smart link page (Apple devices)")
    whatsapp: str | None = None
    recommended: str = Field(description="Which of imessage / sms / url fits the caller's device")


# Ad platforms append their own click id to a landing URL; any of them stands in for click_id.
CLICK_ID_ALIASES = ("click_id", "gclid", "fbclid", "ttclid")
_QUERY_FIELDS = {"body", "page_url", *UTM_FIELDS}


def request_from_query(query: list[tuple[str, str]]) -> OptInLinkRequest:
    """The no-JS link's query string as the same request the POST takes (same validation).

    Known names fill their fields (the first of click_id, gclid, fbclid, ttclid becomes click_id);
    every other name is an extra parameter, so reserved names and bad keys are rejected as in
    `params`. A repeated name keeps its first value. Raises pydantic's ValidationError.
    """
    first: dict[str, str] = {}
    for name, value in query:
        first.setdefault(name, value)
    fields: dict[str, object] = {name: first[name] for name in _QUERY_FIELDS if name in first}
    click_ids = [first[name] for name in CLICK_ID_ALIASES if first.get(name)]
    if click_ids:
        fields["click_id"] = click_ids[0]
    known = _QUERY_FIELDS | set(CLICK_ID_ALIASES)
    fields["params"] = {name: value for name, value in first.items() if name not in known}
    return OptInLinkRequest.model_validate(fields)
