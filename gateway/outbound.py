"""The base of the models that describe what tandem sends (responses, stream events), never a request.

Their validators and serializers are built on first use (pydantic's defer_build), not when their module is
imported: `tandem serve` imports every protocol's models before it listens, most of them are never needed
by a given server (an app speaks one or two protocols), and building them all took ~0.1 s of the cold
start. A request model is built at import all the same: FastAPI builds its validator when the route is
declared.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Outbound(BaseModel):
    model_config = ConfigDict(defer_build=True)
