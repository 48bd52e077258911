"""The loaded saga definitions, by name and version, imported from the configured modules."""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from saga.definitions import Saga
from saga.errors import DefinitionError, UnknownSaga


class Registry:
    """Every loaded version of every saga; new starts take the newest version."""

    def __init__(self, sagas: Iterable[Saga] = ()) -> None:
        self._sagas: dict[str, dict[int, Saga]] = {}
        for saga in sagas:
            self.add(saga)

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """Import each module and take every Saga defined at its top level."""
        registry = cls()
        for name in modules:
            module = _import(name)
            found = [v for v in vars(module).values() if isinstance(v, Saga)]
            if not found:
                raise DefinitionError(f"module {name!r} defines no Saga")
            for saga in found:
                registry.add(saga)
        return registry

    def add(self, saga: Saga) -> None:
        versions = self._sagas.setdefault(saga.name, {})
        known = versions.get(saga.version)
        if known is not None and known is not saga and known.shape_hash != saga.shape_hash:
            raise DefinitionError(
                f"saga {saga.name!r} version {saga.version} is defined twice, differently")
        versions[saga.version] = saga

    def get(self, name: str, version: int | None = None) -> Saga:
        versions = self._sagas.get(name)
        if not versions:
            raise UnknownSaga(f"no saga named {name!r} is loaded")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise UnknownSaga(f"saga {name!r} has no version {version} loaded "
                              f"(loaded: {sorted(versions)})")
        return versions[version]

    def __iter__(self):
        for versions in self._sagas.values():
            yield from (versions[v] for v in sorted(versions))

    def describe(self, in_flight: dict[tuple[str, int], int] | None = None) -> list[dict[str, Any]]:
        """Each saga with its versions and step graphs, for `GET /v1/sagas`."""
        in_flight = in_flight or {}
        return [
            {"name": name,
             "latest": max(versions),
             "versions": [dict(versions[v].describe(), runs_in_flight=in_flight.get((name, v), 0))
                          for v in sorted(versions)]}
            for name, versions in sorted(self._sagas.items())
        ]


def _import(name: str) -> ModuleType:
    """Import a module of SAGA_SAGAS; any failure is a DefinitionError saying which and why."""
    try:
        return importlib.import_module(name)
    except DefinitionError as exc:
        raise DefinitionError(f"module {name!r}: {exc}") from exc
    except ImportError as exc:
        raise DefinitionError(f"module {name!r} cannot be imported: {exc} "
                              "(check SAGA_SAGAS and PYTHONPATH)") from exc
    except Exception as exc:  # a module may fail in any way at import: say where
        raise DefinitionError(f"module {name!r} failed at import: {type(exc).__name__}: "
                              f"{exc}{_where(exc)}") from exc


def _where(exc: BaseException) -> str:
    """ ` (file.py, line 12)`: the innermost frame, or a SyntaxError's own place."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return ""  # its message names the file and line already
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
