"""Who is calling: the master key, one API key (with its team, model globs and limits), or anyone when
access control is off."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from gateway.auth.records import KeyRecord, Limits
from gateway.auth.usage import ANONYMOUS, MASTER


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None
    team: str | None
    is_master: bool
    models: tuple[str, ...] = ()  # fnmatch globs; empty: every model
    name: str | None = None
    limits: Limits = field(default_factory=Limits)
    manage_models: bool = False  # the key's opt-in to model management (pull, create, copy, delete)

    @classmethod
    def of_key(cls, record: KeyRecord) -> Principal:
        return cls(
            key_id=record.id,
            team=record.team,
            is_master=False,
            models=tuple(record.models),
            name=record.name,
            limits=record.limits,
            manage_models=record.manage_models,
        )

    @classmethod
    def master(cls) -> Principal:
        return cls(key_id=None, team=None, is_master=True)

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(key_id=None, team=None, is_master=False)

    @property
    def may_manage_models(self) -> bool:
        return self.is_master or self.manage_models

    @property
    def usage_key(self) -> str:
        """The key id usage is recorded under."""
        return self.key_id or (MASTER if self.is_master else ANONYMOUS)

    def may_use(self, *model_names: str) -> bool:
        """True if any of the model's names (its name, then its aliases) matches one of the key's globs."""
        if self.is_master or not self.models:
            return True
        return any(fnmatchcase(name, glob) for name in model_names for glob in self.models)
