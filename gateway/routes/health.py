"""GET /health: 200 once the server can serve every configured model (loading on demand if needed)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.deps import ModelsDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    models: list[str]
    loaded: list[str]


@router.get("/health")
async def health(models: ModelsDep) -> Health:
    return Health(
        status="ok", models=[m.spec.name for m in models], loaded=[m.spec.name for m in models.loaded()]
    )
