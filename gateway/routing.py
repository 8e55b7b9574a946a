"""Which deployment serves a request: routes over several models (weighted, least-busy, latency), retries,
fallbacks, cooldowns of failing deployments, glob names and per-team overrides."""

from __future__ import annotations

import fnmatch
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backends.remote.upstream import RemoteUpstream, UpstreamConfig
from gateway.config import ModelSpec, Profile
from gateway.registry import ManagedModel, ModelManager

if TYPE_CHECKING:
    from backends.remote.direct import DirectUpstream  # aiohttp: imported when a remote model is first used

LATENCY_SMOOTHING = 0.3  # weight of the newest observation in the moving average


@dataclass(eq=False)
class RemoteModel:
    """A model entry served by an upstream server; its litellm client is made on first use."""

    spec: ModelSpec
    in_flight: int = 0
    _upstream: RemoteUpstream | DirectUpstream | None = None

    def upstream(self) -> RemoteUpstream | DirectUpstream:
        if self._upstream is None:
            remote = self.spec.remote
            assert remote is not None
            key = os.environ.get(remote.api_key_env) if remote.api_key_env else None
            timeouts = remote.timeouts(self.spec.timeout_s)
            config = UpstreamConfig(remote.api_base, remote.model, key, remote.provider, timeouts)
            if remote.via_litellm:
                self._upstream = RemoteUpstream(config)
            else:
                from backends.remote.direct import DirectUpstream

                self._upstream = DirectUpstream(config)
        return self._upstream

    async def aclose(self) -> None:
        if self._upstream is not None:
            await self._upstream.aclose()


@dataclass(eq=False)
class Deployment:
    """One model that can serve requests, with what the router learns about it."""

    name: str
    local: ManagedModel | None = None
    remote: RemoteModel | None = None
    cooldown_until: float = 0.0
    latency_s: float | None = None  # moving average of time to the first byte of the answer

    @property
    def kind(self) -> str:
        if self.remote is not None:
            return "remote"
        assert self.local is not None and self.local.spec.backend is not None  # it runs somewhere
        return self.local.spec.backend

    @property
    def in_flight(self) -> int:
        return self.remote.in_flight if self.remote is not None else self.local.in_use  # type: ignore[union-attr]

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until


@dataclass(frozen=True, slots=True)
class Attempt:
    deployment: Deployment
    fallback_of: str | None = None  # the requested entry, when this attempt is one of its fallbacks


@dataclass
class Router:
    profile: Profile
    models: ModelManager
    rng: random.Random = field(default_factory=random.Random)
    _deployments: dict[str, Deployment] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._specs = {name: spec for spec in self.profile.models if not spec.is_glob for name in
                       [spec.name, *spec.aliases]}  # fmt: skip
        self._globs = [spec for spec in self.profile.models if spec.is_glob]
        self._remotes = {
            spec.name: RemoteModel(spec) for spec in self.profile.models if spec.backend == "remote"
        }

    def lookup(self, requested: str, team: str | None = None) -> ModelSpec | None:
        """The entry a requested name means: a team's override first, then names and aliases, then globs."""
        if team is not None:
            requested = self.profile.team_overrides.get(team, {}).get(requested, requested)
        if requested in self._specs:
            return self._specs[requested]
        local = self.models.resolve(requested)  # models created at run time (Modelfiles, pulls, copies)
        if local is not None:
            return local.spec
        return next((spec for spec in self._globs if fnmatch.fnmatchcase(requested, spec.name)), None)

    def entries(self) -> Iterator[ModelSpec]:
        """Every entry a client may name (globs excluded: they are patterns, not models)."""
        seen = set()
        for spec in [*self.profile.models, *(m.spec for m in [*self.models, *self.models.adapters()])]:
            if spec.name not in seen and not spec.is_glob:
                seen.add(spec.name)
                yield spec

    def deployment(self, spec: ModelSpec) -> Deployment:
        found = self._deployments.get(spec.name)
        if found is None:
            if spec.backend == "remote":
                found = Deployment(spec.name, remote=self._remotes[spec.name])
            else:
                local = self.models.resolve(spec.name)
                if local is None:
                    raise LookupError(f"model {spec.name!r} is not served by this profile")
                found = Deployment(spec.name, local=local)
            self._deployments[spec.name] = found
        elif found.local is not None and self.models.resolve(spec.name) is not found.local:
            found.local = self.models.resolve(spec.name)  # re-created at run time under the same name
        return found

    def plan(self, spec: ModelSpec) -> list[Attempt]:
        """The attempts for one request: the entry's deployments in strategy order (1 + retries of them),
        then each fallback's. Cooling deployments are skipped; if that leaves nothing at all, they are
        tried anyway (a slim chance beats a certain failure)."""
        fallbacks = [f for f in (self.lookup(name) for name in spec.fallbacks) if f is not None]
        for skip_cooling in (True, False):
            attempts = [Attempt(d) for d in self._ordered(spec, 1 + spec.retries, skip_cooling)]
            for fallback in fallbacks:
                ordered = self._ordered(fallback, 1 + fallback.retries, skip_cooling)
                attempts += [Attempt(d, spec.name) for d in ordered]
            if attempts:
                return attempts
        return []

    def _ordered(self, spec: ModelSpec, count: int, skip_cooling: bool) -> list[Deployment]:
        if spec.deployments:
            pairs = [(self.deployment(self._target(d.model)), d.weight) for d in spec.deployments]
        else:
            pairs = [(self.deployment(spec), 1.0)]
        now = time.monotonic()
        ready = [(d, w) for d, w in pairs if not (skip_cooling and d.cooling(now))]
        if not ready:
            return []
        if spec.strategy == "least-busy":
            order = [d for d, _ in sorted(ready, key=lambda p: p[0].in_flight)]
        elif spec.strategy == "latency":
            unknown = [d for d, _ in ready if d.latency_s is None]  # explore before exploiting
            order = unknown + sorted(
                (d for d, _ in ready if d.latency_s is not None), key=lambda d: d.latency_s or 0.0
            )
        else:
            order = self._weighted_order([(d, w) for d, w in ready if w > 0] or ready)
        return [order[i % len(order)] for i in range(count)]

    def _target(self, name: str) -> ModelSpec:
        """A deployment's model: an entry of the profile, or an adapter (a model of the manager's)."""
        if name in self._specs:
            return self._specs[name]
        local = self.models.resolve(name)
        if local is None:
            raise LookupError(f"model {name!r} is not served by this profile")
        return local.spec

    def _weighted_order(self, pairs: list[tuple[Deployment, float]]) -> list[Deployment]:
        remaining, order = list(pairs), []
        while remaining:
            weights = [w for _, w in remaining]
            pick = self.rng.choices(range(len(remaining)), weights=weights if sum(weights) > 0 else None)[0]
            order.append(remaining.pop(pick)[0])
        return order

    def succeeded(self, deployment: Deployment, first_byte_s: float) -> None:
        previous = deployment.latency_s
        deployment.latency_s = first_byte_s if previous is None else (
            LATENCY_SMOOTHING * first_byte_s + (1 - LATENCY_SMOOTHING) * previous)  # fmt: skip

    def failed(self, deployment: Deployment, cooldown_s: float) -> None:
        deployment.cooldown_until = time.monotonic() + cooldown_s

    async def aclose(self) -> None:
        for remote in self._remotes.values():
            await remote.aclose()
