"""The OpenAPI's word for rules a route checks itself, in its own words.

A route refuses a blank text with "text is empty; send some text to speak", not with
pydantic's constraint message, so the rule is not a pydantic constraint and FastAPI would
not publish it: a client generated from the schema, or a fuzzer, then sent what the schema
allowed and got a 422 (Schemathesis found each of these). These add the rules to the
schema only; the routes' checks stay the ones that run.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from service.settings import MAX_LIST_ITEMS
from service.tts.voice_spec import NAME

NOT_BLANK: dict[str, Any] = {"minLength": 1, "pattern": r"\S"}
"""A text with something in it (JSON Schema's pattern searches: one non-space character)."""
NON_EMPTY: dict[str, Any] = {"minLength": 1}
VOICE_NAME: dict[str, Any] = {"pattern": f"^{NAME.pattern}$"}
"""A saved voice's name (`service.tts.voices.check_name`)."""

NotBlank = Annotated[str, Field(json_schema_extra=NOT_BLANK)]
TextList = Annotated[list[NotBlank], Field(max_length=MAX_LIST_ITEMS,
                                           json_schema_extra={"minItems": 1})]
"""A list of texts (labels, inputs): one at least (said by the route), MAX_LIST_ITEMS at
most (checked by pydantic before the items)."""
