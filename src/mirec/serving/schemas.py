"""The service's request bodies (pydantic, strict: no bool for an int, no string for a number, no Infinity or NaN),
shared by the /v1 routes and the Open Inference Protocol routes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from mirec.config import MAX_DIVERSITY_LAMBDA
from mirec.serving.model import MAX_TIMESTAMP, MIN_TIMESTAMP

Timestamp = Annotated[StrictInt, Field(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP)]
DiversityLambda = Annotated[float, Field(ge=0.0, le=MAX_DIVERSITY_LAMBDA, allow_inf_nan=False, strict=True)]


class RecommendBody(BaseModel):
    history: list[StrictStr] = Field(min_length=1, description="original item ids, oldest first")
    timestamps: list[Timestamp] | None = None
    n: StrictInt = Field(50, ge=1)
    exclude_history: StrictBool = False
    diversity_lambda: DiversityLambda = 0.0


class BatchBody(BaseModel):
    requests: list[RecommendBody] = Field(min_length=1)


class InterestsBody(BaseModel):
    history: list[StrictStr] = Field(min_length=1)
    timestamps: list[Timestamp] | None = None


class ReloadBody(BaseModel):
    path: StrictStr | None = None  # default: the bundle path served now (re-read after an in-place update)


__all__ = ["RecommendBody", "BatchBody", "InterestsBody", "ReloadBody"]
