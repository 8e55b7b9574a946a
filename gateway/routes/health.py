"""GET /health: 200 once every configured model can serve."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.deps import RegistryDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    models: list[str]


@router.get("/health")
async def health(registry: RegistryDep) -> Health:
    return Health(status="ok", models=[model.spec.name for model in registry])
